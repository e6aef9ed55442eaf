//! The online store: the latest feature row of every entity, for serving.
//!
//! Backends sit behind [`OnlineStore`]; [`EmbeddedStore`] (a redb file, no server) is
//! the default. The rules every backend keeps (DESIGN §5):
//!
//! - one record per entity and feature-group version: the row with the latest event
//!   time; a write whose event time is older than the stored one never overwrites it
//!   (rows at the same instant replace it: the later emitted row is the later state);
//! - a put is all or nothing, and putting the same rows again changes nothing, so a
//!   replay after a crash is harmless;
//! - a group version is bound to the plugin hash that first wrote it; rows from another
//!   component are refused.
//!
//! It must never run plugins or read sources.

use arrow_array::RecordBatch;
use async_trait::async_trait;
use lockstep_core::key::KeyHasher;
use lockstep_core::rows::{RowWriter, RowsText};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Why an online-store call failed.
#[derive(Debug, Error)]
pub enum OnlineError {
    /// The embedded database failed.
    #[error("online store {path}: {message}")]
    Embedded {
        /// Its file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Rows that do not fit the group.
    #[error("{0}")]
    Rows(String),
    /// Another component already writes this group version.
    #[error(
        "feature group {group} is written by plugin {registered}; refusing rows from plugin {offered} \
         (bump the plugin's version to write a new group version)"
    )]
    OtherPlugin {
        /// `name@version`.
        group: String,
        /// The hash bound to it.
        registered: String,
        /// The hash offered.
        offered: String,
    },
    /// A remote store could not be reached or refused the call for now (throttled,
    /// unavailable): worth retrying.
    #[error("online store {store}: {message}")]
    Unavailable {
        /// Which store (an endpoint).
        store: String,
        /// What went wrong.
        message: String,
    },
    /// A stored record could not be read back.
    #[error("online store {path}: record for `{key}` in {group} is corrupt: {message}")]
    Corrupt {
        /// Its file.
        path: PathBuf,
        /// `name@version`.
        group: String,
        /// The entity.
        key: String,
        /// Why.
        message: String,
    },
}

impl OnlineError {
    /// Whether the same call may pass if retried later: the store was unreachable,
    /// throttled or out of space, not the rows or the group at fault.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OnlineError::Unavailable { .. } | OnlineError::Embedded { .. }
        )
    }
}

/// A feature-group version as the online store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    /// Group name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the component that computes it.
    pub plugin_hash: String,
    /// The entity-key column of its rows.
    pub entity_key: String,
}

impl GroupRef {
    /// The group version a plugin writes: its manifest's name, version and entity key,
    /// bound to the component's hash.
    pub fn of(manifest: &lockstep_abi::Manifest, plugin_hash: &str) -> Self {
        GroupRef {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            plugin_hash: plugin_hash.to_owned(),
            entity_key: manifest.entity_key.clone(),
        }
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The stored record of one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineRecord {
    /// Event time of the row, UTC µs.
    pub event_time: i64,
    /// When it was written, UTC µs.
    pub write_time: i64,
    /// The component that computed it.
    pub plugin_hash: String,
    /// The row: entity key, `event_time` (RFC 3339) and features, exact
    /// ([`lockstep_core::rows`] formats).
    pub row: Map<String, Json>,
}

/// What a put did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutSummary {
    /// Records written or replaced.
    pub written: usize,
    /// Rows left out: older than the stored record, or superseded by a later row of
    /// the same entity in the same put.
    pub stale: usize,
}

/// An online store backend. Its methods are async, as `object_store`'s are: a store
/// over the network (SageMaker) awaits its calls on the caller's runtime, and a store
/// that blocks (the embedded redb file) keeps the blocking inside its implementation.
#[async_trait]
pub trait OnlineStore: Send + Sync {
    /// Writes `rows` (in the group's row schema) at `write_time`, keeping per entity
    /// the row with the latest event time; all or nothing.
    async fn put(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError>;

    /// [`Self::put`] for a writer that has already formatted every row as JSON text
    /// (`text`, one line per row of `rows`): a store that keeps that text takes it
    /// instead of formatting the rows again. Same result as `put`.
    async fn put_with_text(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        text: &RowsText,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError> {
        let _ = text;
        self.put(group, rows, write_time).await
    }

    /// The records of `keys` (`None` for an entity without one), in order.
    async fn get(
        &self,
        group: &GroupRef,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRecord>>, OnlineError>;

    /// Removes an entity's record; says whether there was one.
    async fn delete(&self, group: &GroupRef, key: &str) -> Result<bool, OnlineError>;

    /// Deletes `key`'s record as of `at` (UTC µs), as SageMaker's DeleteRecord does
    /// (`soft`: SoftDelete, else HardDelete): a stored record newer than `at` stays and
    /// the outcome says so; otherwise the record can no longer be read, and no put at
    /// or before `at` brings it back.
    async fn delete_as_of(
        &self,
        group: &GroupRef,
        key: &str,
        at: i64,
        soft: bool,
    ) -> Result<DeleteOutcome, OnlineError>;

    /// [`Self::delete_as_of`] for each of `keys`, in order: an erasure of millions of
    /// entities. A store that can do them together (one transaction) does.
    async fn delete_many_as_of(
        &self,
        group: &GroupRef,
        keys: &[String],
        at: i64,
        soft: bool,
    ) -> Result<Vec<DeleteOutcome>, OnlineError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.delete_as_of(group, key, at, soft).await?);
        }
        Ok(out)
    }
}

const GROUPS: TableDefinition<&str, &str> = TableDefinition::new("__groups");

/// Deletion markers: `<group id>\u{1f}<key>` → the event time (UTC µs) of the latest
/// delete. A put at or before it is stale, so an older write (a replay, a late
/// producer) cannot bring a deleted record back; a later one is a new record.
const TOMBSTONES: TableDefinition<&str, i64> = TableDefinition::new("__tombstones");

fn tombstone_key(group_id: &str, key: &str) -> String {
    format!("{group_id}\u{1f}{key}")
}

/// What [`EmbeddedStore::delete_at`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The record was removed (or there was none); the marker is at the delete's time.
    Deleted {
        /// Whether a record was there.
        existed: bool,
    },
    /// The stored record is newer than the delete: left as it is.
    Newer {
        /// The stored record's event time (UTC µs).
        stored: i64,
    },
}

/// Group version → its rows' column names (a JSON array), registered by the first put
/// of rows from Arrow; records of those rows hold their values only.
const COLUMNS: TableDefinition<&str, &str> = TableDefinition::new("__columns");

/// A stored record: event time and write time (8 bytes each, big-endian), the plugin
/// hash (a u16 length, then UTF-8; length 0: the hash the group version is bound to),
/// then the row as JSON text: an object, or an array of its values in the order of the
/// group version's registered columns. Deciding whether a put is newer reads the first
/// 8 bytes only; rows written from Arrow are formatted straight into the record, as
/// arrays of values with the hash left out (a third of the bytes of an object with its
/// hash: fewer B-tree pages copied and written per put).
fn encode_header(event_time: i64, write_time: i64, plugin_hash: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&event_time.to_be_bytes());
    out.extend_from_slice(&write_time.to_be_bytes());
    let hash = plugin_hash.as_bytes();
    let len = hash.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&hash[..len]);
}

fn encode_record(record: &OnlineRecord) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    encode_header(
        record.event_time,
        record.write_time,
        &record.plugin_hash,
        &mut out,
    );
    serde_json::to_writer(&mut out, &record.row)?;
    Ok(out)
}

fn stored_event_time(bytes: &[u8]) -> Result<i64, String> {
    bytes
        .first_chunk::<8>()
        .map(|b| i64::from_be_bytes(*b))
        .ok_or_else(|| format!("a record of {} bytes", bytes.len()))
}

/// One entity's latest row of a batch (see [`latest_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRow {
    /// The entity key, as text (an int64 key in decimal).
    pub key: String,
    /// Its row in the batch.
    pub row: usize,
    /// The row's event time (µs since the epoch).
    pub event_time: i64,
}

/// Each entity's latest row of `rows`, by the store's rule: the later event time wins,
/// and of rows at the same instant the later one (as a later put would). In no
/// particular order. Rows without the group's entity key or `event_time`, or with a
/// null in either, are refused, naming the row.
pub fn latest_rows(rows: &RecordBatch, group: &GroupRef) -> Result<Vec<LatestRow>, OnlineError> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    let key_column = rows.column_by_name(&group.entity_key).ok_or_else(|| {
        OnlineError::Rows(format!(
            "rows for {} have no entity-key column `{}`",
            group.id(),
            group.entity_key
        ))
    })?;
    let times = rows
        .column_by_name(lockstep_core::schema::EVENT_TIME)
        .ok_or_else(|| OnlineError::Rows(format!("rows for {} have no event_time", group.id())))?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| OnlineError::Rows("event_time is not a timestamp column".into()))?;
    let keys = KeyColumn::of(key_column.as_ref()).ok_or_else(|| {
        OnlineError::Rows(format!(
            "the entity key `{}` of {} is neither a string nor an int64 column",
            group.entity_key,
            group.id()
        ))
    })?;
    // Keys borrowed from the column: one String per entity, not per row.
    let mut latest: HashMap<KeyRef<'_>, usize, KeyHasher> =
        HashMap::with_capacity_and_hasher(rows.num_rows(), KeyHasher::default());
    for r in 0..rows.num_rows() {
        let key = match (times.is_null(r), keys.at(r)) {
            (false, Some(key)) => key,
            _ => {
                return Err(OnlineError::Rows(format!(
                    "row {r} for {} has a null entity key or event time",
                    group.id()
                )));
            }
        };
        match latest.entry(key) {
            Entry::Occupied(mut e) => {
                if times.value(*e.get()) <= times.value(r) {
                    e.insert(r);
                }
            }
            Entry::Vacant(e) => {
                e.insert(r);
            }
        }
    }
    Ok(latest
        .into_iter()
        .map(|(key, row)| LatestRow {
            key: key.to_string(),
            row,
            event_time: times.value(row),
        })
        .collect())
}

/// An entity-key column of rows being put.
enum KeyColumn<'a> {
    Str(&'a arrow_array::StringArray),
    Int(&'a arrow_array::Int64Array),
}

impl<'a> KeyColumn<'a> {
    fn of(column: &'a dyn arrow_array::Array) -> Option<Self> {
        use arrow_array::cast::AsArray;
        match column.data_type() {
            arrow_schema::DataType::Utf8 => Some(KeyColumn::Str(column.as_string::<i32>())),
            arrow_schema::DataType::Int64 => Some(KeyColumn::Int(
                column.as_primitive::<arrow_array::types::Int64Type>(),
            )),
            _ => None,
        }
    }

    /// The key at `row`; `None` when null.
    fn at(&self, row: usize) -> Option<KeyRef<'a>> {
        use arrow_array::Array;
        match self {
            KeyColumn::Str(c) => (!c.is_null(row)).then(|| KeyRef::Str(c.value(row))),
            KeyColumn::Int(c) => (!c.is_null(row)).then(|| KeyRef::Int(c.value(row))),
        }
    }
}

/// An entity key borrowed from its column; displays as
/// [`EntityKey`](lockstep_core::key::EntityKey) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Str(&'a str),
    Int(i64),
}

impl std::fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Str(s) => f.write_str(s),
            KeyRef::Int(i) => write!(f, "{i}"),
        }
    }
}

/// What the store registered for a group version: what records that leave things out
/// are read with.
struct Registered {
    plugin_hash: String,
    columns: Option<Vec<String>>,
}

fn decode_record(bytes: &[u8], registered: &Registered) -> Result<OnlineRecord, String> {
    let short = || format!("a record of {} bytes", bytes.len());
    let event_time = i64::from_be_bytes(*bytes.first_chunk::<8>().ok_or_else(short)?);
    let write_time = i64::from_be_bytes(
        *bytes
            .get(8..16)
            .and_then(|b| b.first_chunk::<8>())
            .ok_or_else(short)?,
    );
    let len = u16::from_be_bytes(
        *bytes
            .get(16..18)
            .and_then(|b| b.first_chunk::<2>())
            .ok_or_else(short)?,
    ) as usize;
    let hash = bytes.get(18..18 + len).ok_or_else(short)?;
    let row = bytes.get(18 + len..).ok_or_else(short)?;
    let plugin_hash = if hash.is_empty() {
        registered.plugin_hash.clone()
    } else {
        String::from_utf8(hash.to_vec()).map_err(|e| e.to_string())?
    };
    let row = if row.first() == Some(&b'[') {
        let columns = registered
            .columns
            .as_ref()
            .ok_or("a row of values, but the group version has no registered columns")?;
        let values: Vec<Json> = serde_json::from_slice(row).map_err(|e| e.to_string())?;
        if values.len() != columns.len() {
            return Err(format!(
                "a row of {} values for {} registered columns",
                values.len(),
                columns.len()
            ));
        }
        columns.iter().cloned().zip(values).collect()
    } else {
        serde_json::from_slice(row).map_err(|e| e.to_string())?
    };
    Ok(OnlineRecord {
        event_time,
        write_time,
        plugin_hash,
        row,
    })
}

/// A batch's column names.
fn column_names(rows: &RecordBatch) -> Vec<String> {
    rows.schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Binds `id` to `value` in a registry table (`__groups`, `__columns`) unless it is
/// bound already; the value it is bound to when that differs.
fn bind(
    table: &mut redb::Table<&str, &str>,
    id: &str,
    value: &str,
) -> Result<Option<String>, redb::StorageError> {
    let bound = table.get(id)?.map(|v| v.value().to_owned());
    match bound {
        Some(bound) if bound != value => Ok(Some(bound)),
        Some(_) => Ok(None),
        None => table.insert(id, value).map(|_| None),
    }
}

/// The embedded online store: one redb file, transactional, no server.
pub struct EmbeddedStore {
    /// `None` once an I/O error closed it: redb refuses every later transaction of a
    /// database that failed to write (a full disk, say), so the next call opens the
    /// file again, which recovers it to its last commit. Callers hold their own `Arc`
    /// for the length of a call; the file is opened again once the last of them ends.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// Group versions whose plugin hash and columns are both registered. Both are
    /// written once and never change, so an entry never goes stale: reads and puts
    /// skip the tables and the parse.
    registrations: Mutex<HashMap<String, Arc<Registered>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` (file `online.redb`).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OnlineError> {
        let dir = dir.as_ref();
        let path = dir.join("online.redb");
        let fail = |message: String| OnlineError::Embedded {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let db = open_database(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => fail(
                "another process has it open (a running `lockstep serve`, `stream` or \
                 `featurestore-local`): the embedded store belongs to one process at a time; \
                 stop that one, or share the store through `lockstep featurestore-local` \
                 (online store sagemaker:URL)"
                    .into(),
            ),
            other => fail(other.to_string()),
        })?;
        Ok(EmbeddedStore {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            path,
            registrations: Mutex::default(),
        })
    }

    /// The open database, opened again first if an I/O error closed it.
    fn database(&self) -> Result<Arc<Database>, OnlineError> {
        if let Some(db) = self.db_slot_read().as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db_slot_write();
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = open_database(&self.path).map_err(|e| match e {
            // A call begun before the error still holds the old one.
            redb::DatabaseError::DatabaseAlreadyOpen => {
                self.fail_text("closed after an I/O error, still in use by a call: retry".into())
            }
            other => self.fail_text(format!("reopening after an I/O error: {other}")),
        })?;
        tracing::info!(path = %self.path.display(), "online store reopened after an I/O error");
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }

    fn db_slot_read(&self) -> std::sync::RwLockReadGuard<'_, Option<Arc<Database>>> {
        // The slot holds a whole value at every instant: a panic elsewhere leaves it so.
        self.db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn db_slot_write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<Database>>> {
        self.db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes records already keyed (a wire protocol's puts), with the rules of
    /// [`OnlineStore::put`]: the group version stays bound to one plugin hash, and per
    /// entity the record with the latest event time wins (equal times: the later put).
    /// All or nothing.
    pub fn put_records(
        &self,
        group: &GroupRef,
        records: Vec<(String, OnlineRecord)>,
    ) -> Result<PutSummary, OnlineError> {
        let encoded = records
            .into_iter()
            .map(|(key, record)| {
                encode_record(&record)
                    .map(|bytes| (key, record.event_time, bytes))
                    .map_err(|e| self.fail_text(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.put_encoded(group, encoded, None)
    }

    /// Writes encoded records `(key, event time, bytes)` under the rules of
    /// [`Self::put_records`]. `columns`: the column names (a JSON array) of records
    /// holding rows as arrays of values, registered for the group version when it has
    /// none; a group version registered with other columns is refused.
    fn put_encoded(
        &self,
        group: &GroupRef,
        records: Vec<(String, i64, Vec<u8>)>,
        columns: Option<&str>,
    ) -> Result<PutSummary, OnlineError> {
        let id = group.id();
        // In key order: the B-tree's pages are then copied and written once per put,
        // not once per record that lands on them (a random order touches pages all
        // over the tree).
        let mut records = records;
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let db = self.database()?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        let mut summary = PutSummary::default();
        {
            let mut groups = txn.open_table(GROUPS).map_err(|e| self.fail(e))?;
            if let Some(hash) =
                bind(&mut groups, &id, &group.plugin_hash).map_err(|e| self.fail(e))?
            {
                return Err(OnlineError::OtherPlugin {
                    group: id,
                    registered: hash,
                    offered: group.plugin_hash.clone(),
                });
            }
            if let Some(columns) = columns {
                let mut registry = txn.open_table(COLUMNS).map_err(|e| self.fail(e))?;
                if let Some(bound) = bind(&mut registry, &id, columns).map_err(|e| self.fail(e))? {
                    return Err(OnlineError::Rows(format!(
                        "rows for {id} have the columns {columns}, but its stored rows have \
                         {bound}"
                    )));
                }
            }
            let table_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&id);
            let mut table = txn.open_table(table_def).map_err(|e| self.fail(e))?;
            let tombstones = txn.open_table(TOMBSTONES).map_err(|e| self.fail(e))?;
            // Markers are rare: look them up only when there are some.
            let any_tombstone =
                !redb::ReadableTableMetadata::is_empty(&tombstones).map_err(|e| self.fail(e))?;
            for (key, event_time, bytes) in records {
                if any_tombstone
                    && let Some(deleted_at) = tombstones
                        .get(tombstone_key(&id, &key).as_str())
                        .map_err(|e| self.fail(e))?
                    && event_time <= deleted_at.value()
                {
                    summary.stale += 1;
                    continue;
                }
                // One lookup: insert, and put the old record back in the rare case it
                // was newer (a replay, or a put that lost a race). Only then is the old
                // record copied.
                let newer_old = match table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(|e| self.fail(e))?
                {
                    None => None,
                    Some(old) => {
                        let old = old.value();
                        let stored_time =
                            stored_event_time(old).map_err(|message| OnlineError::Corrupt {
                                path: self.path.clone(),
                                group: id.clone(),
                                key: key.clone(),
                                message,
                            })?;
                        (stored_time > event_time).then(|| old.to_vec())
                    }
                };
                match newer_old {
                    Some(old) => {
                        table
                            .insert(key.as_str(), old.as_slice())
                            .map_err(|e| self.fail(e))?;
                        summary.stale += 1;
                    }
                    None => summary.written += 1,
                }
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(summary)
    }

    /// The plugin hash and columns registered for group version `id` (empty and
    /// `None` while unregistered).
    fn registered(&self, id: &str) -> Result<Arc<Registered>, OnlineError> {
        if let Some(known) = self.registrations_lock().get(id) {
            return Ok(known.clone());
        }
        let db = self.database()?;
        let txn = db.begin_read().map_err(|e| self.fail(e))?;
        let text = |table: TableDefinition<&str, &str>| match txn.open_table(table) {
            Ok(t) => Ok(t
                .get(id)
                .map_err(|e| self.fail(e))?
                .map(|v| v.value().to_owned())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.fail(e)),
        };
        let plugin_hash = text(GROUPS)?;
        let columns = match text(COLUMNS)? {
            Some(columns) => {
                Some(
                    serde_json::from_str(&columns).map_err(|e| OnlineError::Embedded {
                        path: self.path.clone(),
                        message: format!("the registered columns of {id}: {e}"),
                    })?,
                )
            }
            None => None,
        };
        let complete = plugin_hash.is_some() && columns.is_some();
        let registered = Arc::new(Registered {
            plugin_hash: plugin_hash.unwrap_or_default(),
            columns,
        });
        if complete {
            self.registrations_lock()
                .insert(id.to_owned(), registered.clone());
        }
        Ok(registered)
    }

    fn registrations_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Registered>>> {
        // The map holds only finished entries: one poisoned by a panic is still whole.
        self.registrations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A database error as the store's error; an I/O error also closes the database,
    /// so that the next call opens it again.
    fn fail(&self, e: impl Into<redb::Error>) -> OnlineError {
        let e: redb::Error = e.into();
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.db_slot_write().take();
        }
        self.fail_text(e.to_string())
    }

    fn fail_text(&self, message: String) -> OnlineError {
        OnlineError::Embedded {
            path: self.path.clone(),
            message,
        }
    }
}

/// Opens (or creates) the redb file at `path`.
fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::create(path)
}

/// Runs redb's blocking work without stalling the caller's runtime: on a
/// multi-threaded runtime the worker hands its other tasks to another thread first
/// (`block_in_place`, which borrows instead of copying the rows as `spawn_blocking`
/// would have to); elsewhere (a current-thread runtime, no runtime) it runs in place.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[async_trait]
impl OnlineStore for EmbeddedStore {
    async fn put(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError> {
        blocking(|| self.put_rows(group, rows, None, write_time))
    }

    async fn put_with_text(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        text: &RowsText,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError> {
        if text.len() != rows.num_rows() {
            return Err(OnlineError::Rows(format!(
                "{} rows for {} came with the text of {}",
                rows.num_rows(),
                group.id(),
                text.len()
            )));
        }
        blocking(|| self.put_rows(group, rows, Some(text), write_time))
    }

    async fn get(
        &self,
        group: &GroupRef,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRecord>>, OnlineError> {
        blocking(|| self.get_blocking(group, keys))
    }

    async fn delete(&self, group: &GroupRef, key: &str) -> Result<bool, OnlineError> {
        blocking(|| self.delete_blocking(group, key))
    }

    /// A soft delete and a hard one leave the same thing to read here: nothing, and a
    /// marker that keeps older puts out.
    async fn delete_as_of(
        &self,
        group: &GroupRef,
        key: &str,
        at: i64,
        _soft: bool,
    ) -> Result<DeleteOutcome, OnlineError> {
        blocking(|| self.delete_at(group, key, at))
    }

    /// One transaction for all of `keys` (a transaction per key costs a sync each).
    async fn delete_many_as_of(
        &self,
        group: &GroupRef,
        keys: &[String],
        at: i64,
        _soft: bool,
    ) -> Result<Vec<DeleteOutcome>, OnlineError> {
        blocking(|| self.delete_many_at(group, keys, at))
    }
}

impl EmbeddedStore {
    /// [`OnlineStore::get`] for a caller already on a blocking thread (the
    /// SageMaker-compatible server's handlers run there).
    pub fn get_blocking(
        &self,
        group: &GroupRef,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRecord>>, OnlineError> {
        let id = group.id();
        let db = self.database()?;
        let txn = db.begin_read().map_err(|e| self.fail(e))?;
        let table_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&id);
        let table = match txn.open_table(table_def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
            Err(e) => return Err(self.fail(e)),
        };
        let registered = self.registered(&id)?;
        keys.iter()
            .map(|key| {
                table
                    .get(key.as_str())
                    .map_err(|e| self.fail(e))?
                    .map(|bytes| {
                        decode_record(bytes.value(), &registered).map_err(|message| {
                            OnlineError::Corrupt {
                                path: self.path.clone(),
                                group: id.clone(),
                                key: key.clone(),
                                message,
                            }
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    fn delete_blocking(&self, group: &GroupRef, key: &str) -> Result<bool, OnlineError> {
        let id = group.id();
        let db = self.database()?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        let existed = {
            let table_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&id);
            let mut table = txn.open_table(table_def).map_err(|e| self.fail(e))?;
            let removed = table.remove(key).map_err(|e| self.fail(e))?;
            removed.is_some()
        };
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(existed)
    }
}

impl EmbeddedStore {
    /// Deletes `key`'s record as of `event_time` (UTC µs), as SageMaker's DeleteRecord
    /// does: a stored record newer than the delete stays, and the outcome says so (a
    /// hard delete is then refused by the caller); otherwise the record goes and a
    /// marker at `event_time` keeps any put at or before it out, so nothing older
    /// brings it back.
    pub fn delete_at(
        &self,
        group: &GroupRef,
        key: &str,
        event_time: i64,
    ) -> Result<DeleteOutcome, OnlineError> {
        let mut outcomes =
            self.delete_many_at(group, std::slice::from_ref(&key.to_owned()), event_time)?;
        Ok(outcomes
            .pop()
            .unwrap_or(DeleteOutcome::Deleted { existed: false }))
    }

    /// [`delete_at`](Self::delete_at) for each of `keys`, in one transaction.
    pub fn delete_many_at(
        &self,
        group: &GroupRef,
        keys: &[String],
        event_time: i64,
    ) -> Result<Vec<DeleteOutcome>, OnlineError> {
        let id = group.id();
        let db = self.database()?;
        let txn = db.begin_write().map_err(|e| self.fail(e))?;
        let mut outcomes = Vec::with_capacity(keys.len());
        {
            let table_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&id);
            let mut table = txn.open_table(table_def).map_err(|e| self.fail(e))?;
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(|e| self.fail(e))?;
            for key in keys {
                let stored = match table.get(key.as_str()).map_err(|e| self.fail(e))? {
                    Some(bytes) => Some(stored_event_time(bytes.value()).map_err(|message| {
                        OnlineError::Corrupt {
                            path: self.path.clone(),
                            group: id.clone(),
                            key: key.clone(),
                            message,
                        }
                    })?),
                    None => None,
                };
                let outcome = match stored {
                    Some(stored) if stored > event_time => DeleteOutcome::Newer { stored },
                    _ => {
                        table.remove(key.as_str()).map_err(|e| self.fail(e))?;
                        let marker = tombstone_key(&id, key);
                        let previous = tombstones
                            .get(marker.as_str())
                            .map_err(|e| self.fail(e))?
                            .map(|t| t.value());
                        let at = previous.map_or(event_time, |p| p.max(event_time));
                        tombstones
                            .insert(marker.as_str(), at)
                            .map_err(|e| self.fail(e))?;
                        DeleteOutcome::Deleted {
                            existed: stored.is_some(),
                        }
                    }
                };
                outcomes.push(outcome);
            }
        }
        if outcomes
            .iter()
            .all(|o| matches!(o, DeleteOutcome::Newer { .. }))
        {
            // Nothing changed: the transaction is dropped.
            return Ok(outcomes);
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(outcomes)
    }

    /// Writes each entity's latest row of `rows`, taking its JSON text from `text`
    /// when given.
    fn put_rows(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        text: Option<&RowsText>,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError> {
        // Only each entity's latest row of the batch can be stored: format only those.
        let latest = latest_rows(rows, group)?;
        let superseded = rows.num_rows() - latest.len();
        // Rows as arrays of values under the group version's columns; as objects (with
        // their hash) only if it was registered with other columns.
        let columns = column_names(rows);
        let as_values = self
            .registered(&group.id())?
            .columns
            .as_ref()
            .is_none_or(|registered| *registered == columns);
        let hash = if as_values { "" } else { &group.plugin_hash };
        // Without the text, only the rows stored are formatted.
        let writer = RowWriter::new(rows);
        let records: Vec<(String, i64, Vec<u8>)> = latest
            .into_iter()
            .map(|latest| {
                let mut bytes = Vec::with_capacity(256);
                encode_header(latest.event_time, write_time, hash, &mut bytes);
                match (text, as_values) {
                    (Some(text), true) => bytes.extend_from_slice(text.values(latest.row)),
                    (Some(text), false) => bytes.extend_from_slice(text.row(latest.row)),
                    (None, true) => writer.write_values(latest.row, &mut bytes),
                    (None, false) => writer.write(latest.row, &mut bytes),
                }
                (latest.key, latest.event_time, bytes)
            })
            .collect();
        let columns = as_values.then(|| Json::from(columns).to_string());
        let mut summary = self.put_encoded(group, records, columns.as_deref())?;
        summary.stale += superseded;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;

    #[test]
    fn rows_from_arrow_are_stored_as_values_without_their_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let group = GroupRef {
            name: "g".into(),
            version: "1".into(),
            plugin_hash: "f".repeat(64),
            entity_key: "id".into(),
        };
        let rows = RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            (
                "event_time",
                Arc::new(TimestampMicrosecondArray::from(vec![5]).with_timezone("UTC")),
            ),
            ("x", Arc::new(Float64Array::from(vec![1.5]))),
        ])
        .expect("batch");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(store.put(&group, &rows, 9))
            .expect("put");
        let txn = store.database().expect("open").begin_read().expect("read");
        let table = txn
            .open_table(TableDefinition::<&str, &[u8]>::new(&group.id()))
            .expect("table");
        let stored = table
            .get("a")
            .expect("get")
            .expect("stored")
            .value()
            .to_vec();
        let mut expected = Vec::new();
        encode_header(5, 9, "", &mut expected);
        expected.extend_from_slice(br#"["a","1970-01-01T00:00:00.000005Z",1.5]"#);
        assert_eq!(stored, expected);
        let columns = txn.open_table(COLUMNS).expect("columns");
        assert_eq!(
            columns
                .get("g@1")
                .expect("get")
                .expect("registered")
                .value(),
            r#"["id","event_time","x"]"#
        );
    }
}
