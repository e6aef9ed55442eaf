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
use lockstep_core::rows::row_json;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};
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
    /// Rows older than the stored record, left out.
    pub stale: usize,
}

/// An online store backend.
pub trait OnlineStore: Send + Sync {
    /// Writes `rows` (in the group's row schema) at `write_time`, keeping per entity
    /// the row with the latest event time; all or nothing.
    fn put(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError>;

    /// The records of `keys` (`None` for an entity without one), in order.
    fn get(
        &self,
        group: &GroupRef,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRecord>>, OnlineError>;

    /// Removes an entity's record; says whether there was one.
    fn delete(&self, group: &GroupRef, key: &str) -> Result<bool, OnlineError>;
}

const GROUPS: TableDefinition<&str, &str> = TableDefinition::new("__groups");

/// The embedded online store: one redb file, transactional, no server.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
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
        let db = Database::create(&path).map_err(|e| fail(e.to_string()))?;
        Ok(EmbeddedStore { db, path })
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
        let id = group.id();
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        let mut summary = PutSummary::default();
        {
            let mut groups = txn.open_table(GROUPS).map_err(|e| self.fail(e))?;
            let registered = groups
                .get(id.as_str())
                .map_err(|e| self.fail(e))?
                .map(|v| v.value().to_owned());
            match registered {
                Some(hash) if hash != group.plugin_hash => {
                    return Err(OnlineError::OtherPlugin {
                        group: id,
                        registered: hash,
                        offered: group.plugin_hash.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    groups
                        .insert(id.as_str(), group.plugin_hash.as_str())
                        .map_err(|e| self.fail(e))?;
                }
            }
            let table_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&id);
            let mut table = txn.open_table(table_def).map_err(|e| self.fail(e))?;
            for (key, record) in records {
                let stored_time =
                    match table.get(key.as_str()).map_err(|e| self.fail(e))? {
                        Some(bytes) => {
                            let stored: OnlineRecord = serde_json::from_slice(bytes.value())
                                .map_err(|e| OnlineError::Corrupt {
                                    path: self.path.clone(),
                                    group: id.clone(),
                                    key: key.clone(),
                                    message: e.to_string(),
                                })?;
                            Some(stored.event_time)
                        }
                        None => None,
                    };
                if stored_time.is_some_and(|t| t > record.event_time) {
                    summary.stale += 1;
                    continue;
                }
                let bytes = serde_json::to_vec(&record).map_err(|e| self.fail(e))?;
                table
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(|e| self.fail(e))?;
                summary.written += 1;
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(summary)
    }

    fn fail(&self, e: impl std::fmt::Display) -> OnlineError {
        OnlineError::Embedded {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// An entity key as the text records are stored under.
fn key_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl OnlineStore for EmbeddedStore {
    fn put(
        &self,
        group: &GroupRef,
        rows: &RecordBatch,
        write_time: i64,
    ) -> Result<PutSummary, OnlineError> {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::TimestampMicrosecondType;
        let schema = rows.schema();
        let key_col = schema.index_of(&group.entity_key).map_err(|_| {
            OnlineError::Rows(format!(
                "rows for {} have no entity-key column `{}`",
                group.id(),
                group.entity_key
            ))
        })?;
        let time_col = schema
            .index_of(lockstep_core::schema::EVENT_TIME)
            .map_err(|_| {
                OnlineError::Rows(format!("rows for {} have no event_time", group.id()))
            })?;
        let times = rows
            .column(time_col)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| OnlineError::Rows("event_time is not a timestamp column".into()))?;
        let mut records = Vec::with_capacity(rows.num_rows());
        for r in 0..rows.num_rows() {
            if times.is_null(r) || rows.column(key_col).is_null(r) {
                return Err(OnlineError::Rows(format!(
                    "row {r} for {} has a null entity key or event time",
                    group.id()
                )));
            }
            let row = row_json(rows, r);
            let key = key_text(row.get(&group.entity_key).unwrap_or(&Json::Null));
            records.push((
                key,
                OnlineRecord {
                    event_time: times.value(r),
                    write_time,
                    plugin_hash: group.plugin_hash.clone(),
                    row,
                },
            ));
        }
        self.put_records(group, records)
    }

    fn get(
        &self,
        group: &GroupRef,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRecord>>, OnlineError> {
        let id = group.id();
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&id);
        let table = match txn.open_table(table_def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
            Err(e) => return Err(self.fail(e)),
        };
        keys.iter()
            .map(|key| {
                table
                    .get(key.as_str())
                    .map_err(|e| self.fail(e))?
                    .map(|bytes| {
                        serde_json::from_slice(bytes.value()).map_err(|e| OnlineError::Corrupt {
                            path: self.path.clone(),
                            group: id.clone(),
                            key: key.clone(),
                            message: e.to_string(),
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    fn delete(&self, group: &GroupRef, key: &str) -> Result<bool, OnlineError> {
        let id = group.id();
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
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
