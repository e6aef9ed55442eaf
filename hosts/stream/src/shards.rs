//! [`ShardedProcessor`]: one [`StreamProcessor`] per shard, and shard lineage.
//!
//! Order holds within a shard only, so each shard has its own reorder buffer and
//! watermark (a lagging shard must not make another's events late). When a shard is
//! split or merged, its children go on from its state: each child takes the entities
//! whose partition hash falls in its hash-key range — their per-entity states, their
//! events still in the reorder buffer and the identities a late redelivery may repeat —
//! and inherits the parent's latest event time. Nothing is applied twice or skipped,
//! and an entity's events stay in order across the reshard.
//!
//! Sources hand shards over in lineage order: a child only after its parents were read
//! to their end ([`ShardedProcessor::close`]).

use crate::{
    Decoded, Pending, Record, ShardState, Step, StreamConfig, StreamError, StreamProcessor,
};
use arrow_array::RecordBatch;
use lockstep_core::erasure::Erasures;
use lockstep_core::key::{EntityKey, StateMap};
use lockstep_core::schema::row_schema;
use lockstep_executor::RunStats;
use lockstep_runtime::Plugin;
use std::collections::HashMap;
use std::sync::Arc;

/// A shard as the stream host needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    /// Its id.
    pub id: String,
    /// The shards it was split from or merged from.
    pub parents: Vec<String>,
    /// The partition hashes it holds, inclusive.
    pub hash_range: (u128, u128),
}

/// The partition hash of a key, as Kinesis computes it: MD5 of the UTF-8 bytes read
/// as a big-endian 128-bit integer.
pub fn partition_hash(key: &str) -> u128 {
    u128::from_be_bytes(md5::compute(key.as_bytes()).0)
}

/// The text a producer uses as the partition key of an entity's records.
fn partition_key(key: &EntityKey) -> String {
    key.to_string()
}

/// One shard in a [`Checkpoint`].
#[derive(Debug, Clone, PartialEq)]
pub struct SavedShard {
    /// The shard.
    pub spec: ShardSpec,
    /// Open (being read), or closed and waiting for its children.
    pub open: bool,
    /// Its reorder buffer, latest event time and recent identities.
    pub pending: Pending,
}

/// What [`ShardedProcessor::checkpoint`] returns: save it atomically with the shard
/// positions that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Entity states changed since the previous checkpoint (`None`: removed).
    pub changed: Vec<(EntityKey, Option<Vec<u8>>)>,
    /// Every open shard, and every closed one some of whose entities no child took
    /// yet.
    pub shards: Vec<SavedShard>,
}

/// Runs a plugin over a sharded stream; see the [module](self) docs.
pub struct ShardedProcessor {
    plugin: Plugin,
    config: StreamConfig,
    open: HashMap<String, (ShardSpec, StreamProcessor)>,
    /// Ended shards, holding the entities not yet taken by a child.
    closed: HashMap<String, (ShardSpec, ShardState)>,
    /// Entity states changed in shards closed since the last checkpoint.
    changed_closed: Vec<(EntityKey, Option<Vec<u8>>)>,
    /// Every start state must reach the first checkpoint.
    start_unsaved: bool,
    /// States to start entities from (a backfill's hand-off), not yet taken.
    start: ShardState,
    /// Counters of the shards closed so far.
    closed_stats: crate::StreamStats,
    /// Erased entities, honoured by every shard (see [`Self::set_erasures`]).
    erasures: Arc<Erasures>,
}

impl ShardedProcessor {
    /// A processor with no shards open yet, every entity without state.
    pub fn new(plugin: &Plugin, config: StreamConfig) -> Self {
        ShardedProcessor {
            plugin: plugin.clone(),
            config,
            open: HashMap::new(),
            closed: HashMap::new(),
            changed_closed: Vec::new(),
            start_unsaved: false,
            start: ShardState::default(),
            closed_stats: crate::StreamStats::default(),
            erasures: Arc::default(),
        }
    }

    /// Honours `erasures` (every erasure so far, not only new ones) in every shard, open
    /// or waiting for its children, and in the start states: arriving events of an
    /// erased entity at or before its erasure are dropped, and its state and held
    /// events go now (the next checkpoint removes the state). Shards opened later
    /// honour it too. Returns how many entity states were dropped.
    pub fn set_erasures(&mut self, erasures: Arc<Erasures>) -> Result<usize, StreamError> {
        let manifest = self.plugin.manifest();
        let column = |name: &str| {
            manifest.input_index(name).ok_or_else(|| {
                StreamError::Manifest(format!("the manifest has no input field `{name}`"))
            })
        };
        let (key_col, time_col) = (column(&manifest.entity_key)?, column(&manifest.event_time)?);
        let mut dropped = 0;
        for (_, processor) in self.open.values_mut() {
            dropped += processor.set_erasures(erasures.clone())?.len();
        }
        for (_, state) in self.closed.values_mut() {
            let gone = state.forget_erased(&erasures, key_col, time_col)?;
            dropped += gone.len();
            self.changed_closed
                .extend(gone.into_iter().map(|k| (k, None)));
        }
        let gone = self.start.forget_erased(&erasures, key_col, time_col)?;
        dropped += gone.len();
        self.changed_closed
            .extend(gone.into_iter().map(|k| (k, None)));
        self.erasures = erasures;
        Ok(dropped)
    }

    /// Starts entities from `states` (a backfill's final states): each shard opened
    /// without parents takes those in its hash range.
    pub fn with_states(mut self, states: StateMap) -> Self {
        self.start = ShardState::from_states(states);
        self.start_unsaved = true;
        self
    }

    /// A processor that goes on from a checkpoint: the entity states saved and each
    /// shard saved (open ones are opened again, closed ones wait for their children).
    pub fn restore(
        plugin: &Plugin,
        config: StreamConfig,
        states: StateMap,
        shards: Vec<SavedShard>,
    ) -> Result<Self, StreamError> {
        let mut processor = ShardedProcessor::new(plugin, config);
        processor.start = ShardState::from_states(states);
        for saved in shards.iter().filter(|s| !s.open) {
            processor.closed.insert(
                saved.spec.id.clone(),
                (
                    saved.spec.clone(),
                    ShardState::from_saved(saved.pending.clone(), StateMap::default()),
                ),
            );
        }
        for saved in shards.into_iter().filter(|s| s.open) {
            // The entity states come from `start` by hash range; the pending part is
            // the shard's own. Its parents' pending parts were taken before it saved.
            let key_col = StreamProcessor::new(plugin, config)?.key_column();
            let (low, high) = saved.spec.hash_range;
            let states = processor
                .start
                .take_entities(key_col, |k| {
                    let h = partition_hash(&partition_key(k));
                    low <= h && h <= high
                })?
                .into_states();
            let state = ShardState::from_saved(saved.pending, states);
            let shard = StreamProcessor::resume(plugin, config, state)?;
            // A restored processor honours the erasures given later, by
            // `set_erasures`, which reaches every open shard.
            processor
                .open
                .insert(saved.spec.id.clone(), (saved.spec, shard));
        }
        Ok(processor)
    }

    /// What a checkpoint must save to go on exactly from here: the entity states
    /// changed since the last call, and every open or waiting shard's pending part.
    pub fn checkpoint(&mut self) -> Checkpoint {
        let mut changed = std::mem::take(&mut self.changed_closed);
        if self.start_unsaved {
            self.start_unsaved = false;
            changed.extend(
                self.start
                    .states()
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone()))),
            );
            for (_, state) in self.closed.values() {
                changed.extend(
                    state
                        .states()
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone()))),
                );
            }
            for (_, processor) in self.open.values() {
                changed.extend(
                    processor
                        .states()
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone()))),
                );
            }
        }
        let mut shards = Vec::new();
        for (spec, processor) in self.open.values_mut() {
            changed.extend(processor.take_changed());
            shards.push(SavedShard {
                spec: spec.clone(),
                open: true,
                pending: processor.pending(),
            });
        }
        for (spec, state) in self.closed.values() {
            shards.push(SavedShard {
                spec: spec.clone(),
                open: false,
                pending: state.pending(),
            });
        }
        shards.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Checkpoint { changed, shards }
    }

    /// Whether `shard` is open.
    pub fn is_open(&self, shard: &str) -> bool {
        self.open.contains_key(shard)
    }

    /// Opens a shard, going on from its parents' state (those already closed) or, for a
    /// shard without parents, from the start states.
    pub fn open(&mut self, spec: ShardSpec) -> Result<(), StreamError> {
        if self.open.contains_key(&spec.id) {
            return Ok(());
        }
        let probe = StreamProcessor::new(&self.plugin, self.config)?;
        let key_col = probe.key_column();
        let (low, high) = spec.hash_range;
        let in_range = |k: &EntityKey| {
            let h = partition_hash(&partition_key(k));
            low <= h && h <= high
        };
        let mut state = self.start.take_entities(key_col, in_range)?;
        if state.is_empty() {
            // Only the entities matter from the start states, not their (absent) time.
            state = ShardState::default();
        }
        for parent in &spec.parents {
            if let Some((_, parent_state)) = self.closed.get_mut(parent) {
                let taken = parent_state.take_entities(key_col, in_range)?;
                state.merge(taken);
            }
        }
        self.closed.retain(|_, (_, s)| !s.is_pending_empty());
        let mut processor = StreamProcessor::resume(&self.plugin, self.config, state)?;
        // The start states and parents were cleared of erased entities already; this
        // only passes the rule on to the shard's arriving events.
        processor.set_erasures(self.erasures.clone())?;
        self.open.insert(spec.id.clone(), (spec, processor));
        Ok(())
    }

    /// Takes records of an open shard, in the shard's order.
    pub fn push(&mut self, shard: &str, records: &[Record<'_>]) -> Result<Step, StreamError> {
        let (_, processor) = self
            .open
            .get_mut(shard)
            .ok_or_else(|| StreamError::Config(format!("shard `{shard}` is not open")))?;
        processor.push(records)
    }

    /// Takes records of several open shards at once, each shard's in its order, the
    /// shards in parallel (one thread each; shards share nothing). Steps come back in
    /// the order of `batches`.
    pub fn push_all(
        &mut self,
        batches: &[(&str, Vec<Record<'_>>)],
    ) -> Result<Vec<Step>, StreamError> {
        self.each_shard(batches, |processor, _, records| processor.push(records))
    }

    /// Decodes records of several open shards (in parallel) without taking them: the
    /// first half of [`push_all`](Self::push_all), for [`push_decoded_all`] of this
    /// processor and of others whose plugin has the same
    /// [`decode_signature`](crate::decode_signature).
    ///
    /// [`push_decoded_all`]: Self::push_decoded_all
    pub fn decode_all(
        &mut self,
        batches: &[(&str, Vec<Record<'_>>)],
    ) -> Result<Vec<Decoded>, StreamError> {
        self.each_shard(batches, |processor, _, records| processor.decode(records))
    }

    /// The second half of [`push_all`](Self::push_all): `decoded[i]` is
    /// `batches[i]` decoded by [`decode_all`](Self::decode_all).
    pub fn push_decoded_all(
        &mut self,
        batches: &[(&str, Vec<Record<'_>>)],
        decoded: &[Decoded],
    ) -> Result<Vec<Step>, StreamError> {
        if decoded.len() != batches.len() {
            return Err(StreamError::Config(format!(
                "{} decoded batches for {} shards",
                decoded.len(),
                batches.len()
            )));
        }
        self.each_shard(batches, |processor, i, records| {
            processor.push_decoded(records, &decoded[i])
        })
    }

    /// Runs `f` on each shard of `batches` with its records (and its index in
    /// `batches`), shards in parallel; results in the order of `batches`.
    fn each_shard<T: Send>(
        &mut self,
        batches: &[(&str, Vec<Record<'_>>)],
        f: impl Fn(&mut StreamProcessor, usize, &[Record<'_>]) -> Result<T, StreamError> + Sync,
    ) -> Result<Vec<T>, StreamError> {
        if batches.len() <= 1 {
            return batches
                .iter()
                .enumerate()
                .map(|(i, (shard, records))| {
                    let (_, processor) = self.open.get_mut(*shard).ok_or_else(|| {
                        StreamError::Config(format!("shard `{shard}` is not open"))
                    })?;
                    f(processor, i, records)
                })
                .collect();
        }
        let mut wanted: HashMap<&str, (usize, &[Record<'_>])> = HashMap::new();
        for (i, (shard, records)) in batches.iter().enumerate() {
            if wanted.insert(shard, (i, records)).is_some() {
                return Err(StreamError::Config(format!(
                    "shard `{shard}` appears twice in one push"
                )));
            }
            if !self.open.contains_key(*shard) {
                return Err(StreamError::Config(format!("shard `{shard}` is not open")));
            }
        }
        let f = &f;
        let mut results: HashMap<String, Result<T, StreamError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .open
                .iter_mut()
                .filter_map(|(id, (_, processor))| {
                    let (i, records) = *wanted.get(id.as_str())?;
                    Some((id.clone(), scope.spawn(move || f(processor, i, records))))
                })
                .collect();
            handles
                .into_iter()
                .map(|(id, handle)| {
                    let result = handle.join().unwrap_or_else(|_| {
                        Err(StreamError::Config(format!(
                            "processing shard `{id}` panicked"
                        )))
                    });
                    (id, result)
                })
                .collect()
        });
        batches
            .iter()
            .map(|(shard, _)| {
                results.remove(*shard).unwrap_or_else(|| {
                    Err(StreamError::Config(format!(
                        "shard `{shard}` was not processed"
                    )))
                })
            })
            .collect()
    }

    /// Ends a shard that was read to its end (after a split or merge): its state waits
    /// for its children.
    pub fn close(&mut self, shard: &str) -> Result<(), StreamError> {
        let (spec, mut processor) = self
            .open
            .remove(shard)
            .ok_or_else(|| StreamError::Config(format!("shard `{shard}` is not open")))?;
        self.closed_stats.add(processor.stats());
        self.changed_closed.extend(processor.take_changed());
        let state = processor.into_shard_state();
        if !state.is_pending_empty() {
            self.closed.insert(shard.to_owned(), (spec, state));
        }
        Ok(())
    }

    /// Applies every held event of every shard (end of a finite input).
    pub fn drain(&mut self) -> Result<Step, StreamError> {
        // The end of the input over every shard: each entity takes its wake-ups up to
        // the latest event time any shard saw, as the batch host does over the same
        // events.
        let end = self
            .open
            .values()
            .filter_map(|(_, p)| p.latest_event_time())
            .chain(
                self.closed
                    .values()
                    .filter_map(|(_, s)| s.latest_event_time()),
            )
            .max();
        self.drain_until(end)
    }

    /// Moves every open shard's watermark up to `to` (see
    /// [`StreamProcessor::advance_watermark`]): shards caught up at their tip follow
    /// the clock, so idle entities still take their wake-ups.
    pub fn advance_watermarks(&mut self, to: i64) -> Result<Step, StreamError> {
        let mut out = Gathered::default();
        self.on_open_shards(&mut out, |p| p.advance_watermark(to))?;
        out.into_step(&self.plugin)
    }

    /// Runs `f` on every open shard's processor, in shard order, gathering its rows
    /// and counters into `out`.
    fn on_open_shards(
        &mut self,
        out: &mut Gathered,
        mut f: impl FnMut(&mut StreamProcessor) -> Result<Step, StreamError>,
    ) -> Result<(), StreamError> {
        let mut ids: Vec<String> = self.open.keys().cloned().collect();
        ids.sort();
        for id in ids {
            if let Some((_, processor)) = self.open.get_mut(&id) {
                out.add(f(processor)?);
            }
        }
        Ok(())
    }

    /// Applies every held event in every shard, then every wake-up at or before
    /// `fire_until`.
    pub fn drain_until(&mut self, fire_until: Option<i64>) -> Result<Step, StreamError> {
        let mut out = Gathered::default();
        self.on_open_shards(&mut out, |p| p.drain_until(fire_until))?;
        // Closed shards whose children never came: their buffered events still count.
        let mut closed: Vec<String> = self.closed.keys().cloned().collect();
        closed.sort();
        for id in closed {
            if let Some((_, state)) = self.closed.remove(&id) {
                let mut processor = StreamProcessor::resume(&self.plugin, self.config, state)?;
                processor.set_erasures(self.erasures.clone())?;
                out.add(processor.drain_until(fire_until)?);
            }
        }
        out.into_step(&self.plugin)
    }

    /// Events held in the reorder buffers of the open shards.
    pub fn buffered(&self) -> usize {
        self.open.values().map(|(_, p)| p.buffered()).sum()
    }

    /// Counters over every shard so far.
    pub fn stats(&self) -> crate::StreamStats {
        let mut total = self.closed_stats.clone();
        for (_, p) in self.open.values() {
            total.add(p.stats());
        }
        total
    }
}

/// Rows and counters gathered from several shards' steps.
#[derive(Default)]
struct Gathered {
    rows: Vec<RecordBatch>,
    stats: RunStats,
}

impl Gathered {
    fn add(&mut self, step: Step) {
        self.stats.add(&step.stats);
        self.rows.push(step.rows);
    }

    /// One step holding them all (in the row schema of `plugin`).
    fn into_step(self, plugin: &Plugin) -> Result<Step, StreamError> {
        let schema = row_schema(plugin.manifest());
        Ok(Step {
            rows: arrow_select::concat::concat_batches(&schema, &self.rows)?,
            late: Vec::new(),
            dead: Vec::new(),
            stats: self.stats,
            late_duplicates: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hashes_are_kinesis_md5() {
        // MD5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(
            partition_hash("a"),
            0x0cc1_75b9_c0f1_b6a8_31c3_99e2_6977_2661
        );
    }
}
