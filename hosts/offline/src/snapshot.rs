//! State snapshots: each entity's plugin state at the end of a backfill, so the stream
//! host can start where the batch host stopped (backfill to T, stream from T).
//!
//! A Parquet file with two columns, `entity_key` (string or int64) and `state`
//! (binary), and the group, version, plugin hash and state version in the file's
//! metadata: a snapshot is refused by a plugin it was not made by.

use crate::OfflineError;
use crate::error::{io, unique_tmp_name};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use lockstep_core::key::{EntityKey, StateMap};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Who made a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Group name.
    pub group: String,
    /// Group version.
    pub version: String,
    /// Plugin hash.
    pub plugin_hash: String,
    /// State encoding version.
    pub state_version: u32,
}

const META: [&str; 4] = [
    "lockstep.group",
    "lockstep.version",
    "lockstep.plugin_hash",
    "lockstep.state_version",
];

/// Writes `states` to `path` atomically (temporary file, then rename).
pub fn write_states(
    path: &Path,
    info: &SnapshotInfo,
    states: &StateMap,
) -> Result<usize, OfflineError> {
    let mut entries: Vec<(&EntityKey, &Vec<u8>)> = states.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let ints = entries
        .first()
        .is_some_and(|(k, _)| matches!(k, EntityKey::Int(_)));
    let keys: ArrayRef = if ints {
        Arc::new(Int64Array::from_iter(entries.iter().map(
            |(k, _)| match k {
                EntityKey::Int(i) => Some(*i),
                EntityKey::Str(_) => None,
            },
        )))
    } else {
        Arc::new(StringArray::from_iter(entries.iter().map(
            |(k, _)| match k {
                EntityKey::Str(s) => Some(s.as_str()),
                EntityKey::Int(_) => None,
            },
        )))
    };
    let values: ArrayRef = Arc::new(BinaryArray::from_iter_values(
        entries.iter().map(|(_, v)| v.as_slice()),
    ));
    let schema = Arc::new(Schema::new(vec![
        Field::new("entity_key", keys.data_type().clone(), false),
        Field::new("state", DataType::Binary, false),
    ]));
    let parquet_err = |source| OfflineError::Parquet {
        path: path.to_owned(),
        source,
    };
    let batch = RecordBatch::try_new(schema.clone(), vec![keys, values])?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let tmp = dir.join(unique_tmp_name("snapshot"));
    let file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    let values = [
        info.group.clone(),
        info.version.clone(),
        info.plugin_hash.clone(),
        info.state_version.to_string(),
    ];
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(
            META.iter()
                .zip(values)
                .map(|(k, v)| KeyValue::new(k.to_string(), v))
                .collect(),
        ))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(parquet_err)?;
    writer.write(&batch).map_err(parquet_err)?;
    let file = writer.into_inner().map_err(parquet_err)?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("committing", path))?;
    Ok(entries.len())
}

/// Reads a snapshot written by [`write_states`].
pub fn read_states(path: &Path) -> Result<(SnapshotInfo, StateMap), OfflineError> {
    let parquet_err = |source| OfflineError::Parquet {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io("opening", path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let meta: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| Some((e.key.clone(), e.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let field = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| OfflineError::Registry {
            path: path.to_owned(),
            message: format!("not a Lockstep state snapshot: no `{k}` in its metadata"),
        })
    };
    let info = SnapshotInfo {
        group: field(META[0])?,
        version: field(META[1])?,
        plugin_hash: field(META[2])?,
        state_version: field(META[3])?
            .parse()
            .map_err(|_| OfflineError::Registry {
                path: path.to_owned(),
                message: "state version is not a number".into(),
            })?,
    };
    let mut states = StateMap::default();
    for batch in builder.build().map_err(parquet_err)? {
        let batch = batch?;
        let values =
            batch
                .column(1)
                .as_binary_opt::<i32>()
                .ok_or_else(|| OfflineError::Registry {
                    path: path.to_owned(),
                    message: "the state column is not binary".into(),
                })?;
        let keys = batch.column(0);
        for row in 0..batch.num_rows() {
            let key = match keys.data_type() {
                DataType::Int64 => EntityKey::Int(keys.as_primitive::<Int64Type>().value(row)),
                _ => EntityKey::Str(keys.as_string::<i32>().value(row).to_owned()),
            };
            if !values.is_null(row) {
                states.insert(key, values.value(row).to_vec());
            }
        }
    }
    Ok((info, states))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_with_their_origin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.parquet");
        let info = SnapshotInfo {
            group: "g".into(),
            version: "1.0.0".into(),
            plugin_hash: "abc".into(),
            state_version: 3,
        };
        let mut states = StateMap::default();
        states.insert(EntityKey::Str("b".into()), vec![1, 2, 3]);
        states.insert(EntityKey::Str("a".into()), vec![]);
        assert_eq!(write_states(&path, &info, &states).expect("write"), 2);
        let (back_info, back) = read_states(&path).expect("read");
        assert_eq!((back_info, back), (info, states));
        std::fs::write(dir.path().join("other.parquet"), b"nope").expect("write");
        assert!(read_states(&dir.path().join("other.parquet")).is_err());
    }
}
