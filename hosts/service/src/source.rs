//! Where the service's records come from: shards, read in lineage order.
//!
//! [`KinesisSource`] reads a Kinesis stream; [`MemorySource`] serves records held in
//! memory (benchmarks, tests of the loop without a network). Both go on from a
//! [`Resume`]: the positions a checkpoint saved.

use crate::ServiceError;
use lockstep_kinesis::{Kinesis, KinesisOptions, LineageReader};
use std::collections::{BTreeMap, HashSet};

pub use lockstep_kinesis::{ShardEvent, ShardInfo, ShardRecord};

/// Where a source must go on from: what the last checkpoint saved.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The sequence number of the last record applied, per shard.
    pub positions: BTreeMap<String, String>,
    /// Shards read to their end.
    pub ended: HashSet<String>,
}

/// A source of records, shard by shard, parents before children.
///
/// Reads are async (a network call, as `object_store` and DataFusion's sources are);
/// the service awaits them on its I/O runtime and applies what they return on a
/// thread of its own.
#[async_trait::async_trait]
pub trait Source: Send {
    /// The next round: shards opened, records read, shards ended (possibly nothing).
    /// A failure leaves the source able to retry.
    async fn poll(&mut self) -> Result<Vec<ShardEvent>, ServiceError>;

    /// Whether every open shard was read to its tip at its last read.
    fn caught_up(&self) -> bool;

    /// Milliseconds behind the tip, per open shard.
    fn lag(&self) -> BTreeMap<String, i64> {
        BTreeMap::new()
    }

    /// Whether the last reads reached the tip of every open shard (records may have
    /// come with them): the service then writes at once instead of gathering more.
    fn at_tip(&self) -> bool {
        self.caught_up()
    }
}

/// Every shard of a Kinesis stream.
pub struct KinesisSource {
    reader: LineageReader,
    batch_size: i32,
}

impl KinesisSource {
    /// A source reading `stream` from `resume`, `batch_size` records per shard per
    /// round, a shard found at its tip again only after `tip_interval`.
    pub async fn connect(
        options: &KinesisOptions,
        stream: &str,
        resume: Resume,
        batch_size: i32,
        tip_interval: std::time::Duration,
    ) -> Self {
        let kinesis = Kinesis::connect(options).await;
        KinesisSource {
            reader: LineageReader::resume(&kinesis, stream, resume.positions, resume.ended)
                .with_tip_interval(tip_interval),
            batch_size,
        }
    }
}

#[async_trait::async_trait]
impl Source for KinesisSource {
    async fn poll(&mut self) -> Result<Vec<ShardEvent>, ServiceError> {
        Ok(self.reader.poll(self.batch_size).await?)
    }

    fn caught_up(&self) -> bool {
        self.reader.caught_up()
    }

    fn lag(&self) -> BTreeMap<String, i64> {
        self.reader.lag().clone()
    }

    fn at_tip(&self) -> bool {
        let lag = self.reader.lag();
        self.reader.caught_up() || (!lag.is_empty() && lag.values().all(|ms| *ms == 0))
    }
}

/// Records held in memory: one shard list, no resharding after the start, each
/// shard's records in order with their sequence numbers.
pub struct MemorySource {
    shards: Vec<(ShardInfo, Vec<ShardRecord>, usize)>,
    opened: bool,
    batch_size: usize,
}

impl MemorySource {
    /// Serves `shards` from `resume`, `batch_size` records per shard per round.
    pub fn new(
        shards: Vec<(ShardInfo, Vec<ShardRecord>)>,
        resume: &Resume,
        batch_size: usize,
    ) -> Self {
        let shards = shards
            .into_iter()
            .filter(|(info, _)| !resume.ended.contains(&info.id))
            .map(|(info, records)| {
                let next = match resume.positions.get(&info.id) {
                    Some(seq) => records
                        .iter()
                        .position(|r| &r.sequence == seq)
                        .map_or(0, |i| i + 1),
                    None => 0,
                };
                (info, records, next)
            })
            .collect();
        MemorySource {
            shards,
            opened: false,
            batch_size: batch_size.max(1),
        }
    }
}

#[async_trait::async_trait]
impl Source for MemorySource {
    async fn poll(&mut self) -> Result<Vec<ShardEvent>, ServiceError> {
        let mut events = Vec::new();
        if !self.opened {
            self.opened = true;
            events.extend(
                self.shards
                    .iter()
                    .map(|(info, _, _)| ShardEvent::Opened(info.clone())),
            );
        }
        for (info, records, next) in &mut self.shards {
            let end = (*next + self.batch_size).min(records.len());
            if end > *next {
                events.push(ShardEvent::Records(
                    info.id.clone(),
                    records[*next..end].to_vec(),
                ));
                *next = end;
            }
        }
        Ok(events)
    }

    fn caught_up(&self) -> bool {
        self.opened
            && self
                .shards
                .iter()
                .all(|(_, records, next)| *next >= records.len())
    }
}
