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

impl MemorySource {
    /// `records` (sequence number, partition key, data), in arrival order, on
    /// `shards` shards that split the hash space evenly (ids `shardId-000000000000`,
    /// …), each record on the shard Kinesis puts it on (by the MD5 of its partition
    /// key): a stream without Kinesis, for tests and benchmarks. Sequence numbers
    /// must increase in arrival order, as Kinesis's do; a record's position in the
    /// whole stream will do, and keeps its number when a test replays a part of it.
    pub fn shards_by_hash<K: Into<String>, D: Into<Vec<u8>>>(
        shards: usize,
        records: impl IntoIterator<Item = (u64, K, D)>,
    ) -> Vec<(ShardInfo, Vec<ShardRecord>)> {
        let shards = shards.max(1);
        let width = u128::MAX / shards as u128;
        let infos: Vec<ShardInfo> = (0..shards)
            .map(|i| {
                let start = (i as u128 * width) + u128::from(i > 0);
                let end = if i + 1 == shards {
                    u128::MAX
                } else {
                    (i as u128 + 1) * width
                };
                ShardInfo {
                    id: format!("shardId-{i:012}"),
                    parents: Vec::new(),
                    hash_range: (start, end),
                    closed: false,
                }
            })
            .collect();
        let mut on: Vec<Vec<ShardRecord>> = vec![Vec::new(); shards];
        for (sequence, key, data) in records {
            let key = key.into();
            let hash = lockstep_stream::partition_hash(&key);
            let shard = infos
                .iter()
                .position(|s| s.hash_range.0 <= hash && hash <= s.hash_range.1)
                .unwrap_or(shards - 1);
            on[shard].push(ShardRecord {
                sequence: format!("{sequence:020}"),
                partition_key: key,
                data: data.into(),
            });
        }
        infos.into_iter().zip(on).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_by_hash_cover_the_hash_space_and_hold_each_record_where_kinesis_would() {
        let records: Vec<(u64, String, Vec<u8>)> = (0..2_000u64)
            .map(|i| (i * 3, format!("card-{}", i % 97), vec![i as u8]))
            .collect();
        for n in 1..=5 {
            let shards = MemorySource::shards_by_hash(n, records.clone());
            assert_eq!(shards.len(), n);
            assert_eq!(shards[0].0.hash_range.0, 0);
            assert_eq!(shards[n - 1].0.hash_range.1, u128::MAX);
            for pair in shards.windows(2) {
                assert_eq!(pair[0].0.hash_range.1 + 1, pair[1].0.hash_range.0, "{n}");
            }
            let mut held = 0;
            for (info, on) in &shards {
                held += on.len();
                let mut last = None;
                for r in on {
                    let hash = lockstep_stream::partition_hash(&r.partition_key);
                    assert!(info.hash_range.0 <= hash && hash <= info.hash_range.1);
                    let sequence: u64 = r.sequence.parse().expect("a number");
                    assert!(last.is_none_or(|l| l < sequence), "in arrival order");
                    assert_eq!(sequence % 3, 0, "the number given");
                    last = Some(sequence);
                }
            }
            assert_eq!(held, records.len(), "{n} shards hold every record once");
        }
    }
}
