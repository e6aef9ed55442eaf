//! Amazon Kinesis for the stream host: shards and their lineage, reading every shard
//! in lineage order, ordered puts.
//!
//! - [`Kinesis`]: a client (endpoint, region and credentials from [`KinesisOptions`] or
//!   the standard AWS environment), each call attempt bounded by [`ATTEMPT_TIMEOUT`].
//! - [`ShardReader`]: GetShardIterator/GetRecords over one shard; an expired iterator is
//!   renewed after the last sequence number read, throttling is retried with
//!   exponential backoff and jitter, and a shard found at its tip is read again only
//!   after [`TIP_READ_INTERVAL`].
//! - [`LineageReader`]: reads every shard of a stream, a child only after its parents
//!   were read to their end (after a split or merge), and reports shards opening,
//!   records, and shards ending, in an order a per-shard processor can follow.
//!
//! It knows nothing of plugins, decoding or stores.

use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use thiserror::Error;

/// Why a Kinesis call failed.
#[derive(Debug, Error)]
pub enum KinesisError {
    /// The service (or the network) refused a call, after retries where they help.
    #[error("kinesis {action} on `{stream}`: {message}")]
    Call {
        /// What was being done.
        action: &'static str,
        /// The stream.
        stream: String,
        /// The service's message.
        message: String,
    },
    /// A response broke the API's promises (e.g. a hash key that is not a number).
    #[error("kinesis {0}")]
    Protocol(String),
}

/// Endpoint, region and credentials of the Kinesis service (unset: the standard AWS
/// environment, as every AWS client of Lockstep resolves it).
pub type KinesisOptions = lockstep_aws::AwsOptions;

/// A Kinesis client.
#[derive(Debug, Clone)]
pub struct Kinesis {
    client: aws_sdk_kinesis::Client,
}

/// One shard as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Shard id.
    pub id: String,
    /// The shards it was split or merged from.
    pub parents: Vec<String>,
    /// The partition hashes it holds, inclusive.
    pub hash_range: (u128, u128),
    /// Closed by a split or merge: no record will be added to it.
    pub closed: bool,
}

/// One record read from a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecord {
    /// Its sequence number in the shard.
    pub sequence: String,
    /// The producer's partition key.
    pub partition_key: String,
    /// The payload.
    pub data: Vec<u8>,
}

/// Where a [`ShardReader`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The oldest record kept.
    TrimHorizon,
    /// Just after this sequence number (a checkpoint).
    After(String),
}

fn call_error<E: std::fmt::Display>(action: &'static str, stream: &str, e: E) -> KinesisError {
    KinesisError::Call {
        action,
        stream: stream.to_owned(),
        message: e.to_string(),
    }
}

/// Full error text of an SDK error, including the service's message.
fn describe<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kinesis::error::SdkError;
    match e {
        // The service's own words: its error code and message, not the SDK's debug
        // dump of the response.
        SdkError::ServiceError(service) => {
            let err = service.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => err.to_string(),
            }
        }
        SdkError::TimeoutError(_) => "the request timed out".into(),
        SdkError::DispatchFailure(failure) => match failure.as_connector_error() {
            Some(connector) => format!("cannot reach Kinesis: {connector}"),
            None => "cannot reach Kinesis".into(),
        },
        other => {
            // The source chain says what went wrong (e.g. a response that did not parse).
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Whether retrying the call may help: throttling, a service fault, a timeout or a
/// connection problem. A request the service refused as invalid (a validation error,
/// a missing stream, bad credentials) fails the same way again.
fn is_transient<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    use aws_sdk_kinesis::error::SdkError;
    match e {
        SdkError::ServiceError(service) => matches!(
            service.err().code(),
            Some(
                "ProvisionedThroughputExceededException"
                    | "LimitExceededException"
                    | "ThrottlingException"
                    | "InternalFailure"
                    | "InternalServerError"
                    | "ServiceUnavailable"
                    | "KMSThrottlingException"
            ) | None
        ),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => false,
    }
}

/// Exponential backoff with jitter: 50 ms doubling to 5 s, times a factor in [0.5, 1).
fn backoff(attempt: u32) -> Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(7)).min(5_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = 0.5 + (nanos % 1000) as f64 / 2000.0;
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// What [`Kinesis::describe`] tells of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// `ACTIVE`, `CREATING`, `UPDATING` or `DELETING`.
    pub status: String,
    /// Shards open for writing.
    pub open_shards: i32,
}

/// Attempts before a throttled or failing call gives up.
const ATTEMPTS: u32 = 8;

/// How long one attempt of a call may take before it is abandoned and retried on a
/// new connection. The SDK sets none: a connection that stops answering (a partition,
/// a frozen endpoint) held a read forever, silently. A GetRecords answer (at most 10
/// MB) takes well under a second in a region.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Kinesis {
    /// A client for `options`, each attempt of a call bounded by [`ATTEMPT_TIMEOUT`].
    pub async fn connect(options: &KinesisOptions) -> Self {
        Self::connect_with_timeout(options, ATTEMPT_TIMEOUT).await
    }

    /// A client for `options` whose call attempts each give up after `attempt` (a
    /// timed-out attempt is retried like any transient failure).
    pub async fn connect_with_timeout(options: &KinesisOptions, attempt: Duration) -> Self {
        let shared = options.sdk_config().await;
        let timeouts = aws_sdk_kinesis::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(attempt)
            .build();
        let config = aws_sdk_kinesis::config::Builder::from(&shared)
            .timeout_config(timeouts)
            .build();
        Kinesis {
            client: aws_sdk_kinesis::Client::from_conf(config),
        }
    }

    /// Creates a stream with `shards` shards and waits until it is active.
    pub async fn create_stream(&self, stream: &str, shards: i32) -> Result<(), KinesisError> {
        self.client
            .create_stream()
            .stream_name(stream)
            .shard_count(shards)
            .send()
            .await
            .map_err(|e| call_error("CreateStream", stream, describe(&e)))?;
        self.wait_active(stream).await
    }

    /// Deletes a stream (and its records).
    pub async fn delete_stream(&self, stream: &str) -> Result<(), KinesisError> {
        self.client
            .delete_stream()
            .stream_name(stream)
            .enforce_consumer_deletion(true)
            .send()
            .await
            .map_err(|e| call_error("DeleteStream", stream, describe(&e)))?;
        Ok(())
    }

    /// The stream's status and open shards; `None` when there is no such stream.
    pub async fn describe(&self, stream: &str) -> Result<Option<StreamSummary>, KinesisError> {
        match self
            .client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
        {
            Ok(out) => Ok(out.stream_description_summary().map(|s| StreamSummary {
                status: s.stream_status().as_str().to_owned(),
                open_shards: s.open_shard_count(),
            })),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(call_error("DescribeStreamSummary", stream, describe(&e))),
        }
    }

    /// Waits until the stream is active (after creation or resharding).
    pub async fn wait_active(&self, stream: &str) -> Result<(), KinesisError> {
        for attempt in 0..60 {
            let out = self
                .client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .map_err(|e| call_error("DescribeStreamSummary", stream, describe(&e)))?;
            if out
                .stream_description_summary()
                .map(|s| s.stream_status() == &StreamStatus::Active)
                .unwrap_or(false)
            {
                return Ok(());
            }
            tokio::time::sleep(backoff(attempt.min(3))).await;
        }
        Err(call_error(
            "DescribeStreamSummary",
            stream,
            "the stream did not become active",
        ))
    }

    /// Puts records in order: each PutRecords call carries up to 500, and the records
    /// a call could not put are retried (with backoff) before the next call starts.
    /// Order holds across calls; within one call a retried record lands after the
    /// others of its call (Kinesis gives no stronger promise for batched puts).
    pub async fn put_ordered(
        &self,
        stream: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<(), KinesisError> {
        for chunk in records.chunks(500) {
            let mut pending: Vec<&(String, Vec<u8>)> = chunk.iter().collect();
            let mut attempt = 0;
            while !pending.is_empty() {
                let entries = pending
                    .iter()
                    .map(|(key, data)| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(key)
                            .data(Blob::new(data.clone()))
                            .build()
                            .map_err(|e| call_error("PutRecords", stream, e))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .put_records()
                    .stream_name(stream)
                    .set_records(Some(entries))
                    .send()
                    .await;
                let out = match out {
                    Ok(out) => out,
                    Err(e) if is_transient(&e) && attempt + 1 < ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                    Err(e) => return Err(call_error("PutRecords", stream, describe(&e))),
                };
                // Keep the failed ones, in order.
                let failed: Vec<&(String, Vec<u8>)> = out
                    .records()
                    .iter()
                    .zip(&pending)
                    .filter(|(r, _)| r.error_code().is_some())
                    .map(|(_, p)| *p)
                    .collect();
                if !failed.is_empty() {
                    attempt += 1;
                    if attempt >= ATTEMPTS {
                        return Err(call_error(
                            "PutRecords",
                            stream,
                            format!("{} records still failing after retries", failed.len()),
                        ));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
                pending = failed;
            }
        }
        Ok(())
    }

    /// Every shard of the stream (open and closed, still retained).
    pub async fn list_shards(&self, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(stream),
            };
            let page = request
                .send()
                .await
                .map_err(|e| call_error("ListShards", stream, describe(&e)))?;
            for shard in page.shards() {
                let range = shard.hash_key_range().ok_or_else(|| {
                    KinesisError::Protocol(format!(
                        "shard {} has no hash key range",
                        shard.shard_id()
                    ))
                })?;
                let parse = |text: &str| {
                    text.parse::<u128>().map_err(|_| {
                        KinesisError::Protocol(format!("hash key `{text}` is not a 128-bit number"))
                    })
                };
                out.push(ShardInfo {
                    id: shard.shard_id().to_owned(),
                    parents: shard
                        .parent_shard_id()
                        .into_iter()
                        .chain(shard.adjacent_parent_shard_id())
                        .map(str::to_owned)
                        .collect(),
                    hash_range: (
                        parse(range.starting_hash_key())?,
                        parse(range.ending_hash_key())?,
                    ),
                    closed: shard
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                });
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Splits `shard` at `at` (the first hash of the new upper child); for tests and
    /// operations.
    pub async fn split(&self, stream: &str, shard: &str, at: u128) -> Result<(), KinesisError> {
        self.client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard)
            .new_starting_hash_key(at.to_string())
            .send()
            .await
            .map_err(|e| call_error("SplitShard", stream, describe(&e)))?;
        self.wait_active(stream).await
    }

    /// A reader of one shard from `from`.
    pub fn reader(&self, stream: &str, shard: &str, from: Position) -> ShardReader {
        ShardReader {
            client: self.client.clone(),
            stream: stream.to_owned(),
            shard: shard.to_owned(),
            iterator: None,
            from,
            ended: false,
            closed: false,
            tip_interval: TIP_READ_INTERVAL,
            next_read: None,
        }
    }
}

/// The least time between two reads of a shard once a read found it at its tip:
/// Kinesis allows five GetRecords calls per second per shard, and reading an idle
/// shard faster only spends that quota (and the server's time) on empty answers.
/// While a shard is behind, it is read again at once.
pub const TIP_READ_INTERVAL: Duration = Duration::from_millis(200);

/// One batch read from a shard.
#[derive(Debug, Clone, Default)]
pub struct ShardBatch {
    /// The records, in shard order.
    pub records: Vec<ShardRecord>,
    /// How far behind the shard's tip the reader is (0: caught up).
    pub millis_behind: Option<i64>,
    /// The shard is closed and this was its last batch.
    pub ended: bool,
}

/// Reads one shard with GetRecords; see the [crate] docs.
#[derive(Debug)]
pub struct ShardReader {
    client: aws_sdk_kinesis::Client,
    stream: String,
    shard: String,
    iterator: Option<String>,
    /// Where to (re)start: the start position, then after the last record read.
    from: Position,
    ended: bool,
    closed: bool,
    /// See [`TIP_READ_INTERVAL`].
    tip_interval: Duration,
    /// When the shard may be read again, after a read that found it at its tip.
    next_read: Option<tokio::time::Instant>,
}

impl ShardReader {
    /// Sets the least time between reads once the shard is at its tip (default
    /// [`TIP_READ_INTERVAL`]).
    pub fn set_tip_interval(&mut self, interval: Duration) {
        self.tip_interval = interval;
    }

    /// Whether [`Self::next_batch`] would read at `now` without waiting.
    fn due(&self, now: tokio::time::Instant) -> bool {
        self.next_read.is_none_or(|at| at <= now)
    }

    /// The shard read.
    pub fn shard(&self) -> &str {
        &self.shard
    }

    /// Whether the shard is closed and read to its end.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Marks the shard closed (as listed after a split or merge): once a read at the
    /// tip comes back empty, it has ended. Kinesis also says so by returning no next
    /// iterator; some implementations keep returning one.
    pub fn set_closed(&mut self, closed: bool) {
        self.closed = closed;
    }

    async fn renew_iterator(&mut self) -> Result<String, KinesisError> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.shard);
        let request = match &self.from {
            Position::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Position::After(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        let out = request
            .send()
            .await
            .map_err(|e| call_error("GetShardIterator", &self.stream, describe(&e)))?;
        out.shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| KinesisError::Protocol(format!("no iterator for shard {}", self.shard)))
    }

    /// The next batch of at most `limit` records (possibly none). After a read that
    /// found the shard at its tip, the next one first waits for the tip interval.
    pub async fn next_batch(&mut self, limit: i32) -> Result<ShardBatch, KinesisError> {
        if self.ended {
            return Ok(ShardBatch {
                ended: true,
                ..ShardBatch::default()
            });
        }
        if let Some(at) = self.next_read.take() {
            tokio::time::sleep_until(at).await;
        }
        let mut attempt = 0;
        loop {
            let started = tokio::time::Instant::now();
            let iterator = match self.iterator.take() {
                Some(it) => it,
                None => self.renew_iterator().await?,
            };
            let result = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(limit)
                .send()
                .await;
            match result {
                Ok(out) => {
                    let records: Vec<ShardRecord> = out
                        .records()
                        .iter()
                        .map(|r| ShardRecord {
                            sequence: r.sequence_number().to_owned(),
                            partition_key: r.partition_key().unwrap_or_default().to_owned(),
                            data: r.data().as_ref().to_vec(),
                        })
                        .collect();
                    if let Some(last) = records.last() {
                        self.from = Position::After(last.sequence.clone());
                    }
                    self.iterator = out.next_shard_iterator().map(str::to_owned);
                    let at_tip = out.millis_behind_latest().unwrap_or(0) == 0;
                    if at_tip && records.len() < usize::try_from(limit).unwrap_or(0) {
                        self.next_read = Some(started + self.tip_interval);
                    }
                    self.ended =
                        self.iterator.is_none() || (self.closed && records.is_empty() && at_tip);
                    return Ok(ShardBatch {
                        records,
                        millis_behind: out.millis_behind_latest(),
                        ended: self.ended,
                    });
                }
                Err(e) => {
                    let retry = match e.as_service_error() {
                        // Iterators live five minutes: start again after the last record.
                        Some(GetRecordsError::ExpiredIteratorException(_)) => {
                            self.iterator = None;
                            true
                        }
                        Some(GetRecordsError::ProvisionedThroughputExceededException(_))
                        | Some(GetRecordsError::KmsThrottlingException(_)) => {
                            self.iterator = Some(iterator);
                            true
                        }
                        // Network trouble: the same iterator is still good.
                        None => {
                            self.iterator = Some(iterator);
                            true
                        }
                        Some(_) => false,
                    };
                    attempt += 1;
                    if !retry || attempt >= ATTEMPTS {
                        return Err(call_error("GetRecords", &self.stream, describe(&e)));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
}

/// What a [`LineageReader`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// A shard may now be read: its parents (if any) have ended.
    Opened(ShardInfo),
    /// Records of an open shard, in shard order.
    Records(String, Vec<ShardRecord>),
    /// A shard ended (closed and read to its end).
    Ended(String),
}

/// Reads every shard of a stream in lineage order; see the [crate] docs.
#[derive(Debug)]
pub struct LineageReader {
    kinesis: Kinesis,
    stream: String,
    readers: BTreeMap<String, ShardReader>,
    ended: HashSet<String>,
    known: Vec<ShardInfo>,
    caught_up: HashSet<String>,
    /// Where to start shards a checkpoint names (after their last record applied).
    resume_at: BTreeMap<String, String>,
    /// Milliseconds behind the tip, per open shard, at its last read.
    lag: BTreeMap<String, i64>,
    /// What a poll that failed had already read (its shards' iterators moved past
    /// it): the next poll delivers it first, so a failure loses nothing.
    carried: Vec<ShardEvent>,
    /// See [`TIP_READ_INTERVAL`].
    tip_interval: Duration,
}

impl LineageReader {
    /// A reader of `stream` from the oldest records.
    pub fn new(kinesis: &Kinesis, stream: &str) -> Self {
        LineageReader {
            kinesis: kinesis.clone(),
            stream: stream.to_owned(),
            readers: BTreeMap::new(),
            ended: HashSet::new(),
            known: Vec::new(),
            caught_up: HashSet::new(),
            resume_at: BTreeMap::new(),
            lag: BTreeMap::new(),
            carried: Vec::new(),
            tip_interval: TIP_READ_INTERVAL,
        }
    }

    /// Reads each shard found at its tip again only after `interval` (default
    /// [`TIP_READ_INTERVAL`]). A poll skips such a shard while others are behind, and
    /// when none is, waits until every shard may be read.
    pub fn with_tip_interval(mut self, interval: Duration) -> Self {
        self.tip_interval = interval;
        for reader in self.readers.values_mut() {
            reader.set_tip_interval(interval);
        }
        self
    }

    /// A reader going on from a checkpoint: each shard in `positions` just after its
    /// sequence number, the shards in `ended` never again, any other from its oldest
    /// record.
    pub fn resume(
        kinesis: &Kinesis,
        stream: &str,
        positions: BTreeMap<String, String>,
        ended: HashSet<String>,
    ) -> Self {
        LineageReader {
            resume_at: positions,
            ended,
            ..LineageReader::new(kinesis, stream)
        }
    }

    /// Lists the shards and opens those whose parents have ended (or are gone).
    async fn refresh(&mut self, events: &mut Vec<ShardEvent>) -> Result<(), KinesisError> {
        self.known = self.kinesis.list_shards(&self.stream).await?;
        let listed: HashSet<&str> = self.known.iter().map(|s| s.id.as_str()).collect();
        for shard in &self.known {
            if let Some(reader) = self.readers.get_mut(&shard.id) {
                reader.set_closed(shard.closed);
                continue;
            }
            if self.ended.contains(&shard.id) {
                continue;
            }
            let ready = shard
                .parents
                .iter()
                .all(|p| self.ended.contains(p) || !listed.contains(p.as_str()));
            if ready {
                let from = match self.resume_at.get(&shard.id) {
                    Some(sequence) => Position::After(sequence.clone()),
                    None => Position::TrimHorizon,
                };
                let mut reader = self.kinesis.reader(&self.stream, &shard.id, from);
                reader.set_closed(shard.closed);
                reader.set_tip_interval(self.tip_interval);
                self.readers.insert(shard.id.clone(), reader);
                events.push(ShardEvent::Opened(shard.clone()));
            }
        }
        Ok(())
    }

    /// One round: a batch from every open shard, read at once (opening shards as their
    /// parents end). If a read fails, what the other shards returned is kept for the
    /// next poll, which delivers it first: their iterators have moved past it.
    pub async fn poll(&mut self, limit: i32) -> Result<Vec<ShardEvent>, KinesisError> {
        let mut events = std::mem::take(&mut self.carried);
        match self.poll_into(limit, &mut events).await {
            Ok(()) => Ok(events),
            Err(e) => {
                self.carried = events;
                Err(e)
            }
        }
    }

    async fn poll_into(
        &mut self,
        limit: i32,
        events: &mut Vec<ShardEvent>,
    ) -> Result<(), KinesisError> {
        if self.known.is_empty() {
            self.refresh(events).await?;
        }
        // Shards still behind are read at once, and shards found at their tip only once
        // their interval has passed. When every shard is at its tip, the poll waits for
        // the last of them and reads them all together: one round, not one per shard.
        if self.readers.values().all(|r| r.next_read.is_some())
            && let Some(at) = self.readers.values().filter_map(|r| r.next_read).max()
        {
            tokio::time::sleep_until(at).await;
        }
        let now = tokio::time::Instant::now();
        let reads = futures_util::future::join_all(
            self.readers
                .iter_mut()
                .filter(|(_, reader)| reader.due(now))
                .map(|(id, reader)| async move { (id.clone(), reader.next_batch(limit).await) }),
        )
        .await;
        let mut any_ended = false;
        let mut failed = None;
        for (id, read) in reads {
            let batch = match read {
                Ok(batch) => batch,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            self.lag
                .insert(id.clone(), batch.millis_behind.unwrap_or(0));
            if batch.records.is_empty() && batch.millis_behind.unwrap_or(0) == 0 {
                self.caught_up.insert(id.clone());
            } else {
                self.caught_up.remove(&id);
            }
            if !batch.records.is_empty() {
                events.push(ShardEvent::Records(id.clone(), batch.records));
            }
            if batch.ended {
                self.readers.remove(&id);
                self.caught_up.remove(&id);
                self.lag.remove(&id);
                self.ended.insert(id.clone());
                events.push(ShardEvent::Ended(id));
                any_ended = true;
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // A shard that ended opens its children; a quiet round may hide a reshard that
        // closed a shard being read, which only a fresh listing shows.
        if any_ended || (events.is_empty() && self.caught_up()) {
            self.refresh(events).await?;
        }
        Ok(())
    }

    /// How far behind the tip each open shard was at its last read (ms).
    pub fn lag(&self) -> &BTreeMap<String, i64> {
        &self.lag
    }

    /// Whether every open shard's last read was empty at the tip.
    pub fn caught_up(&self) -> bool {
        self.readers.keys().all(|id| self.caught_up.contains(id))
    }

    /// Looks for new shards (after a reshard that closed no shard read so far).
    pub async fn rescan(&mut self) -> Result<Vec<ShardEvent>, KinesisError> {
        let mut events = Vec::new();
        self.refresh(&mut events).await?;
        Ok(events)
    }
}
