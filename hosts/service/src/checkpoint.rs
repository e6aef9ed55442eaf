//! The checkpoint store: where the stream host keeps what it needs to go on after a
//! restart, in one redb file, every part of a checkpoint committed in one transaction.
//!
//! - `entities`: each entity's plugin state, written as it changes;
//! - `shards`: each open (or closed and waiting) shard's position — the sequence number
//!   of the last record applied — with its reorder buffer, latest event time and
//!   recent identities;
//! - `ended`: shards read to their end;
//! - `meta`: the plugin the state belongs to, the committed length of every log and
//!   the checkpoint's generation (1 for the first commit, one more for each after it,
//!   across restarts: the audit log names checkpoints by it).
//!
//! Because a shard position commits with the state its records produced, a crash at
//! any point resumes from a state and a position that agree: records after the
//! position are read again and produce the same rows again.

use crate::ServiceError;
use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use lockstep_core::key::{EntityKey, StateMap};
use lockstep_stream::{Checkpoint, Pending, SavedShard, ShardSpec};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The tables of one feature group: unprefixed for a service of one group (as every
/// checkpoint before groups shared a service), `group/<name>/…` for each group of a
/// shared stream, all in one file so that one transaction commits every group.
#[derive(Debug, Clone)]
struct GroupTables {
    /// `""` or `group/<name>/`: before each table and each per-group meta key.
    prefix: String,
    entities: String,
    shards: String,
    ended: String,
    plugin_hash: String,
    input_schema: SchemaRef,
}

impl GroupTables {
    fn new(binding: GroupBinding) -> Self {
        let prefix = match &binding.name {
            Some(name) => format!("group/{name}/"),
            None => String::new(),
        };
        GroupTables {
            entities: format!("{prefix}entities"),
            shards: format!("{prefix}shards"),
            ended: format!("{prefix}ended"),
            prefix,
            plugin_hash: binding.plugin_hash,
            input_schema: binding.input_schema,
        }
    }
    fn entities(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.entities)
    }
    fn shards(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.shards)
    }
    fn ended(&self) -> TableDefinition<'_, &'static str, ()> {
        TableDefinition::new(&self.ended)
    }
    fn meta_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// A feature group whose state a checkpoint store holds.
#[derive(Debug, Clone)]
pub struct GroupBinding {
    /// The group's name when several groups share the store; `None` for a service of
    /// one group.
    pub name: Option<String>,
    /// The component whose states these are: another one's are refused.
    pub plugin_hash: String,
    /// The schema of its held events (the stream's `buffer_schema`).
    pub input_schema: SchemaRef,
}

/// The committed lengths (bytes) of the service's append-only logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogLengths {
    /// The row log.
    pub rows: u64,
    /// The late-event log.
    pub late: u64,
    /// The dead-letter log.
    pub dead: u64,
}

/// Everything a checkpoint store holds, read back at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// Every entity's state.
    pub states: StateMap,
    /// Open and waiting shards.
    pub shards: Vec<SavedShard>,
    /// The sequence number of the last record applied, per shard.
    pub positions: BTreeMap<String, String>,
    /// Shards read to their end.
    pub ended: HashSet<String>,
    /// The logs' committed lengths.
    pub logs: LogLengths,
    /// Whether anything was ever committed.
    pub fresh: bool,
    /// The generation of the checkpoint read back (0: none was ever committed).
    pub generation: u64,
}

/// One commit: a processor checkpoint and the source positions that produced it.
pub struct Commit<'a> {
    /// From `ShardedProcessor::checkpoint`.
    pub checkpoint: &'a Checkpoint,
    /// Last record applied per shard.
    pub positions: &'a BTreeMap<String, String>,
    /// Shards read to their end.
    pub ended: &'a HashSet<String>,
    /// The logs' lengths once this commit's lines are written.
    pub logs: LogLengths,
}

/// The checkpoint store of one service; see the [module](self) docs.
pub struct CheckpointStore {
    db: Database,
    path: PathBuf,
    groups: Vec<GroupTables>,
}

/// The text of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the checkpoint reader panicked".into())
}

thread_local! {
    /// Set while this thread runs a redb call whose panic becomes an error.
    static CONTAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` without the panic hook printing it:
/// redb panics on some damaged files, and the user should read one error naming the
/// file, not a backtrace. Panics elsewhere still print as before.
fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINING.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CONTAINING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(was));
    result.map_err(|panic| panic_message(&panic))
}

impl CheckpointStore {
    /// Opens (or creates) `dir/state.redb` for the component `plugin_hash`, whose held
    /// events have `input_schema` (the stream's `buffer_schema`). State
    /// written by another component is refused: its entity states would be read by
    /// code that does not know them.
    pub fn open(
        dir: &Path,
        plugin_hash: &str,
        input_schema: SchemaRef,
    ) -> Result<Self, ServiceError> {
        Self::open_unless_new(dir, plugin_hash, input_schema, None)
    }

    /// [`open`](Self::open), but a file that was never bound to a plugin (absent,
    /// emptied or replaced) is refused with [`ServiceError::MissingCheckpoint`]
    /// naming `refuse_new` (the logs found beside it) before anything is written to
    /// it: those logs were not written under it.
    pub fn open_unless_new(
        dir: &Path,
        plugin_hash: &str,
        input_schema: SchemaRef,
        refuse_new: Option<String>,
    ) -> Result<Self, ServiceError> {
        let single = GroupBinding {
            name: None,
            plugin_hash: plugin_hash.to_owned(),
            input_schema,
        };
        Self::open_groups(dir, vec![single], refuse_new)
    }

    /// Opens (or creates) `dir/state.redb` holding the states of `groups`, each bound
    /// to its component (another component's states are refused), as
    /// [`open_unless_new`](Self::open_unless_new). A store of several groups is bound
    /// to their names too: a group added to or removed from the service is refused,
    /// since the others' shard positions say nothing of what it has read.
    pub fn open_groups(
        dir: &Path,
        groups: Vec<GroupBinding>,
        refuse_new: Option<String>,
    ) -> Result<Self, ServiceError> {
        let path = dir.join("state.redb");
        std::fs::create_dir_all(dir).map_err(|e| ServiceError::Checkpoint {
            path: path.clone(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        let names: Option<Vec<String>> = groups.iter().map(|g| g.name.clone()).collect();
        if groups.is_empty() || (names.is_none() && groups.len() > 1) {
            return Err(ServiceError::Start(
                "a checkpoint store holds one unnamed group or several named ones".into(),
            ));
        }
        let existed = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
        let damaged = |message: String| ServiceError::Checkpoint {
            path: path.clone(),
            message: format!(
                "the checkpoint is damaged ({message}); restore it from a copy, or move it \
                 aside and start with --fresh (the logs are kept)"
            ),
        };
        // redb may panic on some damaged files rather than return an error.
        let db = match contain(|| Database::create(&path)) {
            Ok(Ok(db)) => db,
            Ok(Err(e)) if existed => return Err(damaged(e.to_string())),
            Ok(Err(e)) => {
                return Err(ServiceError::Checkpoint {
                    path: path.clone(),
                    message: e.to_string(),
                });
            }
            Err(panic) => return Err(damaged(panic)),
        };
        let store = CheckpointStore {
            db,
            path,
            groups: groups.into_iter().map(GroupTables::new).collect(),
        };
        let names_text = names.as_ref().map(|n| {
            let mut sorted = n.clone();
            sorted.sort();
            sorted.join(", ")
        });
        let mut unbound = Vec::new();
        for group in &store.groups {
            let bound = store.guarded(|s| s.meta(&group.meta_key("plugin_hash")))?;
            match bound {
                Some(hash) if hash != group.plugin_hash => {
                    return Err(ServiceError::OtherPlugin {
                        path: store.path.clone(),
                        registered: hash,
                        offered: group.plugin_hash.clone(),
                    });
                }
                Some(_) => {}
                None => unbound.push(group),
            }
        }
        // What the file holds: several named groups, one group alone, or nothing yet.
        let holds = match store.guarded(|s| s.meta("groups"))? {
            Some(names) => Some(Some(names)),
            None if store.guarded(|s| s.meta("plugin_hash"))?.is_some() => Some(None),
            None => None,
        };
        if let Some(held) = holds
            && held != names_text
        {
            let described = |names: Option<&str>| match names {
                Some(n) => format!("the groups [{n}]"),
                None => "one group alone".to_owned(),
            };
            return Err(ServiceError::Checkpoint {
                path: store.path.clone(),
                message: format!(
                    "it holds the state of {}, and this service runs {}: a group's shard \
                     positions say nothing of what another has read. Run the new set of \
                     groups with a new state directory (backfill a new group first)",
                    described(held.as_deref()),
                    described(names_text.as_deref())
                ),
            });
        }
        if unbound.len() == store.groups.len() {
            if refuse_new.is_some() {
                return Err(ServiceError::MissingCheckpoint {
                    path: store.path.clone(),
                    logs: refuse_new.unwrap_or_default(),
                });
            }
            let tx = store.db.begin_write().map_err(|e| store.fail(e))?;
            {
                let mut meta = tx.open_table(META).map_err(|e| store.fail(e))?;
                for group in &store.groups {
                    meta.insert(
                        group.meta_key("plugin_hash").as_str(),
                        group.plugin_hash.as_str(),
                    )
                    .map_err(|e| store.fail(e))?;
                }
                if let Some(names) = &names_text {
                    meta.insert("groups", names.as_str())
                        .map_err(|e| store.fail(e))?;
                }
            }
            tx.commit().map_err(|e| store.fail(e))?;
        } else if !unbound.is_empty() {
            return Err(store.corrupt(
                "the groups' bindings",
                "some groups are bound to a plugin and some are not",
            ));
        }
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` and turns a panic inside redb into an error naming the file.
    fn guarded<T>(
        &self,
        read: impl FnOnce(&Self) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        contain(|| read(self)).unwrap_or_else(|panic| {
            Err(ServiceError::Checkpoint {
                path: self.path.clone(),
                message: format!("the checkpoint is damaged ({panic})"),
            })
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> ServiceError {
        ServiceError::Checkpoint {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> ServiceError {
        ServiceError::Checkpoint {
            path: self.path.clone(),
            message: format!("{what} is corrupt: {e}"),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<String>, ServiceError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        Ok(meta
            .get(key)
            .map_err(|e| self.fail(e))?
            .map(|v| v.value().to_owned()))
    }

    /// Reads everything back (the first group's state, for a store of one group).
    pub fn restore(&self) -> Result<Restored, ServiceError> {
        self.restore_groups()?
            .into_iter()
            .next()
            .ok_or_else(|| ServiceError::Start("a checkpoint store of no group".into()))
    }

    /// Reads every group's state back, in the order the groups were opened.
    pub fn restore_groups(&self) -> Result<Vec<Restored>, ServiceError> {
        self.guarded(|s| {
            let restored = s
                .groups
                .iter()
                .map(|g| s.restore_unguarded(g))
                .collect::<Result<Vec<_>, _>>()?;
            // One transaction commits every group: their positions agree unless the
            // file was tampered with.
            if let Some(first) = restored.first()
                && restored.iter().any(|r| {
                    r.positions != first.positions
                        || r.ended != first.ended
                        || r.fresh != first.fresh
                })
            {
                return Err(s.corrupt(
                    "the groups' shard positions",
                    "they disagree, though one transaction commits them all",
                ));
            }
            Ok(restored)
        })
    }

    /// The committed length of the log of records no group took (0: none yet).
    pub fn unrouted_length(&self) -> Result<u64, ServiceError> {
        match self.guarded(|s| s.meta("unrouted"))? {
            Some(text) => text.parse().map_err(|e| self.corrupt("meta unrouted", e)),
            None => Ok(0),
        }
    }

    fn restore_unguarded(&self, group: &GroupTables) -> Result<Restored, ServiceError> {
        let mut out = Restored::default();
        let logs = self.meta(&group.meta_key("logs"))?;
        out.fresh = logs.is_none();
        if let Some(text) = logs {
            let v: Json = serde_json::from_str(&text).map_err(|e| self.corrupt("meta logs", e))?;
            let len = |k: &str| v.get(k).and_then(Json::as_u64).unwrap_or(0);
            out.logs = LogLengths {
                rows: len("rows"),
                late: len("late"),
                dead: len("dead"),
            };
        }
        out.generation = match self.meta("generation")? {
            Some(text) => text
                .parse()
                .map_err(|e| self.corrupt("meta generation", e))?,
            None => 0,
        };
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        if let Ok(table) = tx.open_table(group.entities()) {
            for item in table.iter().map_err(|e| self.fail(e))? {
                let (k, v) = item.map_err(|e| self.fail(e))?;
                let key = decode_key(k.value()).map_err(|e| self.corrupt("an entity key", e))?;
                let state = open_state(k.value(), v.value()).ok_or_else(|| {
                    self.corrupt(
                        &format!("the state of entity `{key}`"),
                        "it fails its checksum",
                    )
                })?;
                out.states.insert(key, state.to_vec());
            }
        }
        if let Ok(table) = tx.open_table(group.shards()) {
            for item in table.iter().map_err(|e| self.fail(e))? {
                let (k, v) = item.map_err(|e| self.fail(e))?;
                let (saved, position) = decode_shard(v.value(), &group.input_schema)
                    .map_err(|e| self.corrupt(&format!("shard {}", k.value()), e))?;
                if let Some(p) = position {
                    out.positions.insert(saved.spec.id.clone(), p);
                }
                out.shards.push(saved);
            }
        }
        if let Ok(table) = tx.open_table(group.ended()) {
            for item in table.iter().map_err(|e| self.fail(e))? {
                let (k, _) = item.map_err(|e| self.fail(e))?;
                out.ended.insert(k.value().to_owned());
            }
        }
        Ok(out)
    }

    /// Commits `commit` in one transaction (durable when this returns); returns its
    /// generation.
    pub fn commit(&self, commit: &Commit<'_>) -> Result<u64, ServiceError> {
        self.prepare(commit.checkpoint, commit.positions, commit.ended)?
            .commit(commit.logs)
    }

    /// Writes a commit's entity states, shard positions and ended shards into a
    /// transaction that is not committed yet: the logs' lengths are known only once
    /// the round's lines are written. The service prepares while the round's outputs
    /// are written and commits after they are durable. Dropping the result commits
    /// nothing.
    pub fn prepare(
        &self,
        checkpoint: &Checkpoint,
        positions: &BTreeMap<String, String>,
        ended: &HashSet<String>,
    ) -> Result<PreparedCommit<'_>, ServiceError> {
        self.prepare_groups(&[checkpoint], positions, ended)
    }

    /// [`prepare`](Self::prepare) for every group at once, `checkpoints` in the order
    /// the groups were opened: the groups' states and positions go into one
    /// transaction.
    pub fn prepare_groups(
        &self,
        checkpoints: &[&Checkpoint],
        positions: &BTreeMap<String, String>,
        ended: &HashSet<String>,
    ) -> Result<PreparedCommit<'_>, ServiceError> {
        if checkpoints.len() != self.groups.len() {
            return Err(ServiceError::Start(format!(
                "{} checkpoints for {} groups",
                checkpoints.len(),
                self.groups.len()
            )));
        }
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        for (group, checkpoint) in self.groups.iter().zip(checkpoints) {
            let mut entities = tx.open_table(group.entities()).map_err(|e| self.fail(e))?;
            for (key, state) in &checkpoint.changed {
                let k = encode_key(key);
                match state {
                    Some(s) => {
                        let sealed = seal_state(&k, s);
                        entities
                            .insert(k.as_slice(), sealed.as_slice())
                            .map_err(|e| self.fail(e))?;
                    }
                    None => {
                        entities.remove(k.as_slice()).map_err(|e| self.fail(e))?;
                    }
                }
            }
            let mut shards = tx.open_table(group.shards()).map_err(|e| self.fail(e))?;
            shards.retain(|_, _| false).map_err(|e| self.fail(e))?;
            for saved in &checkpoint.shards {
                let position = positions.get(&saved.spec.id).map(String::as_str);
                let bytes = encode_shard(saved, position).map_err(|e| self.fail(e))?;
                shards
                    .insert(saved.spec.id.as_str(), bytes.as_slice())
                    .map_err(|e| self.fail(e))?;
            }
            let mut ended_table = tx.open_table(group.ended()).map_err(|e| self.fail(e))?;
            for id in ended {
                ended_table
                    .insert(id.as_str(), ())
                    .map_err(|e| self.fail(e))?;
            }
        }
        Ok(PreparedCommit { store: self, tx })
    }
}

/// A checkpoint written but not committed; see [`CheckpointStore::prepare`].
pub struct PreparedCommit<'a> {
    store: &'a CheckpointStore,
    tx: redb::WriteTransaction,
}

impl PreparedCommit<'_> {
    /// Records the logs' lengths and commits (durable when this returns); returns the
    /// generation committed, one more than the last.
    pub fn commit(self, logs: LogLengths) -> Result<u64, ServiceError> {
        self.commit_groups(&[logs], None)
    }

    /// [`commit`](Self::commit) with each group's log lengths, in the order the
    /// groups were opened, and the length of the log of records no group took (a
    /// shared stream with routes).
    pub fn commit_groups(
        self,
        logs: &[LogLengths],
        unrouted: Option<u64>,
    ) -> Result<u64, ServiceError> {
        let store = self.store;
        let fail = |e: &dyn std::fmt::Display| store.fail(e);
        if logs.len() != store.groups.len() {
            return Err(ServiceError::Start(format!(
                "log lengths of {} groups for {}",
                logs.len(),
                store.groups.len()
            )));
        }
        let generation = {
            let mut meta = self.tx.open_table(META).map_err(|e| fail(&e))?;
            let last = match meta.get("generation").map_err(|e| fail(&e))? {
                Some(text) => text
                    .value()
                    .parse::<u64>()
                    .map_err(|e| store.corrupt("meta generation", e))?,
                None => 0,
            };
            for (group, logs) in store.groups.iter().zip(logs) {
                let logs =
                    json!({"rows": logs.rows, "late": logs.late, "dead": logs.dead}).to_string();
                meta.insert(group.meta_key("logs").as_str(), logs.as_str())
                    .map_err(|e| fail(&e))?;
            }
            if let Some(unrouted) = unrouted {
                meta.insert("unrouted", unrouted.to_string().as_str())
                    .map_err(|e| fail(&e))?;
            }
            let generation = last + 1;
            meta.insert("generation", generation.to_string().as_str())
                .map_err(|e| fail(&e))?;
            generation
        };
        self.tx.commit().map_err(|e| store.fail(e))?;
        Ok(generation)
    }
}

/// An entity state as stored: its bytes, then an XXH3-64 of the stored key and the
/// bytes (8 bytes, little endian), so a damaged file is reported as damage rather than
/// handed to the plugin.
fn seal_state(key: &[u8], state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(state.len() + 8);
    out.extend_from_slice(state);
    out.extend_from_slice(&state_checksum(key, state).to_le_bytes());
    out
}

/// The state bytes of a stored value, if its checksum holds.
fn open_state<'a>(key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    let split = stored.len().checked_sub(8)?;
    let (state, sum) = stored.split_at(split);
    let sum = u64::from_le_bytes(sum.try_into().ok()?);
    (sum == state_checksum(key, state)).then_some(state)
}

fn state_checksum(key: &[u8], state: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(state);
    h.digest()
}

/// An entity key as stored: a tag byte, then the UTF-8 text or the big-endian integer.
fn encode_key(key: &EntityKey) -> Vec<u8> {
    match key {
        EntityKey::Str(s) => {
            let mut v = Vec::with_capacity(s.len() + 1);
            v.push(b's');
            v.extend_from_slice(s.as_bytes());
            v
        }
        EntityKey::Int(i) => {
            let mut v = vec![b'i'];
            v.extend_from_slice(&i.to_be_bytes());
            v
        }
    }
}

fn decode_key(bytes: &[u8]) -> Result<EntityKey, String> {
    match bytes.split_first() {
        Some((b's', rest)) => std::str::from_utf8(rest)
            .map(|s| EntityKey::Str(s.to_owned()))
            .map_err(|e| e.to_string()),
        Some((b'i', rest)) => <[u8; 8]>::try_from(rest)
            .map(|b| EntityKey::Int(i64::from_be_bytes(b)))
            .map_err(|_| format!("an integer key of {} bytes", rest.len())),
        _ => Err("unknown key tag".into()),
    }
}

fn key_json(key: &EntityKey) -> Json {
    match key {
        EntityKey::Str(s) => json!({"s": s}),
        EntityKey::Int(i) => json!({"i": i}),
    }
}

fn key_from_json(v: &Json) -> Result<EntityKey, String> {
    if let Some(s) = v.get("s").and_then(Json::as_str) {
        Ok(EntityKey::Str(s.to_owned()))
    } else if let Some(i) = v.get("i").and_then(Json::as_i64) {
        Ok(EntityKey::Int(i))
    } else {
        Err(format!("not an entity key: {v}"))
    }
}

/// A saved shard: a little-endian u32 header length, a JSON header, then the reorder
/// buffer as an Arrow IPC stream.
fn encode_shard(saved: &SavedShard, position: Option<&str>) -> Result<Vec<u8>, String> {
    let header = json!({
        "id": saved.spec.id,
        "parents": saved.spec.parents,
        "hash_range": [saved.spec.hash_range.0.to_string(), saved.spec.hash_range.1.to_string()],
        "open": saved.open,
        "position": position,
        "max_seen": saved.pending.max_seen,
        "taken": saved.pending.taken.iter()
            .map(|(t, k, id)| json!([t, key_json(k), format!("{id:032x}")]))
            .collect::<Vec<_>>(),
    })
    .to_string();
    let header_len = u32::try_from(header.len()).map_err(|_| "shard header too large")?;
    let mut out = Vec::new();
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    if let Some(first) = saved.pending.buffer.first() {
        let mut writer =
            StreamWriter::try_new(&mut out, &first.schema()).map_err(|e| e.to_string())?;
        for batch in &saved.pending.buffer {
            writer.write(batch).map_err(|e| e.to_string())?;
        }
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn decode_shard(
    bytes: &[u8],
    input_schema: &SchemaRef,
) -> Result<(SavedShard, Option<String>), String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("shorter than its header length")?;
    let len = u32::from_le_bytes(*len) as usize;
    let (header, ipc) = rest.split_at_checked(len).ok_or("header cut short")?;
    let h: Json = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let text = |k: &str| {
        h.get(k)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no `{k}`"))
    };
    let hash = |i: usize| -> Result<u128, String> {
        h["hash_range"][i]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "bad hash_range".to_owned())
    };
    let spec = ShardSpec {
        id: text("id")?,
        parents: h["parents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        hash_range: (hash(0)?, hash(1)?),
    };
    let mut taken = Vec::new();
    for item in h["taken"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let t = item[0].as_i64().ok_or("bad taken time")?;
        let k = key_from_json(&item[1])?;
        let id = item[2]
            .as_str()
            .and_then(|s| u128::from_str_radix(s, 16).ok())
            .ok_or("bad taken id")?;
        taken.push((t, k, id));
    }
    let mut buffer: Vec<RecordBatch> = Vec::new();
    if !ipc.is_empty() {
        let reader = StreamReader::try_new(ipc, None).map_err(|e| e.to_string())?;
        let (found, expected) = (reader.schema(), input_schema.fields());
        // Held events written before they carried their origin (shard, sequence) have
        // the schema's leading columns only; the processor gives them empty origins.
        let without_origins = found.fields().len() + 2 == expected.len()
            && found
                .fields()
                .iter()
                .zip(expected.iter())
                .all(|(a, b)| a == b);
        if found.fields() != expected && !without_origins {
            return Err("the buffered events' schema is not the plugin's input schema".into());
        }
        for batch in reader {
            buffer.push(batch.map_err(|e| e.to_string())?);
        }
    }
    let saved = SavedShard {
        spec,
        open: h["open"].as_bool().unwrap_or(true),
        pending: Pending {
            buffer,
            max_seen: h["max_seen"].as_i64(),
            taken,
        },
    };
    Ok((saved, h["position"].as_str().map(str::to_owned)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]))
    }

    fn named(name: &str, hash: &str) -> GroupBinding {
        GroupBinding {
            name: Some(name.into()),
            plugin_hash: hash.into(),
            input_schema: schema(),
        }
    }

    #[test]
    fn groups_commit_together_and_a_changed_set_of_groups_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let both = || vec![named("a", "h1"), named("b", "h2")];
        let store = CheckpointStore::open_groups(dir.path(), both(), None).unwrap();
        let state = |k: &str, v: u8| Checkpoint {
            changed: vec![(EntityKey::Str(k.into()), Some(vec![v]))],
            shards: Vec::new(),
        };
        let positions = BTreeMap::from([("s-0".to_owned(), "42".to_owned())]);
        let generation = store
            .prepare_groups(
                &[&state("x", 1), &state("y", 2)],
                &positions,
                &HashSet::new(),
            )
            .unwrap()
            .commit_groups(
                &[
                    LogLengths {
                        rows: 10,
                        ..Default::default()
                    },
                    LogLengths {
                        rows: 20,
                        ..Default::default()
                    },
                ],
                Some(7),
            )
            .unwrap();
        assert_eq!(generation, 1);
        drop(store);
        // The groups may come in another order: each finds its own tables.
        let store = CheckpointStore::open_groups(
            dir.path(),
            vec![named("b", "h2"), named("a", "h1")],
            None,
        )
        .unwrap();
        let back = store.restore_groups().unwrap();
        assert_eq!(
            back[0].states.get(&EntityKey::Str("y".into())),
            Some(&vec![2])
        );
        assert_eq!(
            back[1].states.get(&EntityKey::Str("x".into())),
            Some(&vec![1])
        );
        assert_eq!((back[0].logs.rows, back[1].logs.rows), (20, 10));
        assert_eq!(store.unrouted_length().unwrap(), 7);
        drop(store);

        for (groups, why) in [
            (vec![named("a", "h1")], "a group removed"),
            (
                vec![named("a", "h1"), named("b", "h2"), named("c", "h3")],
                "a group added",
            ),
        ] {
            let err = CheckpointStore::open_groups(dir.path(), groups, None)
                .err()
                .unwrap_or_else(|| panic!("{why} was taken"));
            assert!(err.to_string().contains("[a, b]"), "{why}: {err}");
        }
        let err = CheckpointStore::open(dir.path(), "h1", schema())
            .err()
            .expect("one group alone over a store of two");
        assert!(err.to_string().contains("one group alone"), "{err}");
        let other = CheckpointStore::open_groups(
            dir.path(),
            vec![named("a", "h1"), named("b", "CHANGED")],
            None,
        );
        assert!(matches!(other, Err(ServiceError::OtherPlugin { .. })));

        // A store of one group alone is not taken over by a set of groups.
        let alone = tempfile::tempdir().unwrap();
        CheckpointStore::open(alone.path(), "h1", schema()).unwrap();
        let err = CheckpointStore::open_groups(alone.path(), both(), None)
            .err()
            .expect("groups over a store of one");
        assert!(err.to_string().contains("one group alone"), "{err}");
    }

    #[test]
    fn a_commit_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), "abc", schema()).unwrap();
        let fresh = store.restore().unwrap();
        assert!(fresh.fresh);
        assert_eq!(fresh.generation, 0);
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(vec!["é", ""])),
                Arc::new(Int64Array::from(vec![Some(i64::MIN), None])),
            ],
        )
        .unwrap();
        let saved = SavedShard {
            spec: ShardSpec {
                id: "shardId-1".into(),
                parents: vec!["shardId-0".into()],
                hash_range: (0, u128::MAX),
            },
            open: true,
            pending: Pending {
                buffer: vec![batch],
                max_seen: Some(-5),
                taken: vec![
                    (7, EntityKey::Int(-1), u128::MAX),
                    (8, EntityKey::Str("x".into()), 3),
                ],
            },
        };
        let checkpoint = Checkpoint {
            changed: vec![
                (EntityKey::Str("a".into()), Some(vec![1, 2])),
                (EntityKey::Int(i64::MAX), Some(vec![])),
            ],
            shards: vec![saved.clone()],
        };
        let positions = BTreeMap::from([("shardId-1".to_owned(), "4999".to_owned())]);
        let ended = HashSet::from(["shardId-0".to_owned()]);
        let logs = LogLengths {
            rows: 10,
            late: 2,
            dead: 0,
        };
        let first = store
            .commit(&Commit {
                checkpoint: &checkpoint,
                positions: &positions,
                ended: &ended,
                logs,
            })
            .unwrap();
        assert_eq!(first, 1);
        // A removal in a later commit.
        let removal = Checkpoint {
            changed: vec![(EntityKey::Str("a".into()), None)],
            shards: vec![saved.clone()],
        };
        let second = store
            .commit(&Commit {
                checkpoint: &removal,
                positions: &positions,
                ended: &ended,
                logs,
            })
            .unwrap();
        assert_eq!(second, 2);
        drop(store);
        let store = CheckpointStore::open(dir.path(), "abc", schema()).unwrap();
        let back = store.restore().unwrap();
        assert!(!back.fresh);
        assert_eq!(back.shards, vec![saved]);
        assert_eq!(back.positions, positions);
        assert_eq!(back.ended, ended);
        assert_eq!(back.logs, logs);
        assert_eq!(back.generation, 2, "generations count on across a reopen");
        assert_eq!(back.states.len(), 1);
        assert_eq!(back.states[&EntityKey::Int(i64::MAX)], Vec::<u8>::new());
    }

    #[test]
    fn of_two_changes_to_one_entity_in_a_commit_the_later_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), "abc", schema()).unwrap();
        let key = |s: &str| EntityKey::Str(s.into());
        // Each entity changed twice in one commit (in a shard closed since the last
        // commit, then in its child): the later change is the one kept.
        let checkpoint = Checkpoint {
            changed: vec![
                (key("z"), Some(vec![1])),
                (key("a"), Some(vec![2])),
                (key("m"), None),
                (key("z"), Some(vec![3])),
                (key("a"), None),
                (key("m"), Some(vec![4])),
            ],
            shards: vec![],
        };
        store
            .commit(&Commit {
                checkpoint: &checkpoint,
                positions: &BTreeMap::new(),
                ended: &HashSet::new(),
                logs: LogLengths::default(),
            })
            .unwrap();
        let states = store.restore().unwrap().states;
        assert_eq!(states.len(), 2, "{states:?}");
        assert_eq!(states[&key("z")], vec![3]);
        assert_eq!(states[&key("m")], vec![4]);
    }

    /// The service prepares a checkpoint while the round's outputs are written: one
    /// whose outputs failed is dropped and must leave the last commit as it was, and
    /// the next round commits on top of it.
    #[test]
    fn a_prepared_commit_dropped_leaves_the_last_commit_and_the_next_one_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path(), "abc", schema()).unwrap();
        let key = |s: &str| EntityKey::Str(s.into());
        let round = |changed| Checkpoint {
            changed,
            shards: vec![],
        };
        let positions = BTreeMap::from([("shardId-0".to_owned(), "7".to_owned())]);
        let logs = |rows| LogLengths {
            rows,
            late: 0,
            dead: 0,
        };
        let commit = |changed, rows| {
            store
                .prepare(&round(changed), &positions, &HashSet::new())
                .unwrap()
                .commit(logs(rows))
                .unwrap()
        };
        assert_eq!(commit(vec![(key("a"), Some(vec![1]))], 10), 1);
        let abandoned = store
            .prepare(
                &round(vec![(key("a"), Some(vec![2])), (key("b"), Some(vec![3]))]),
                &BTreeMap::from([("shardId-0".to_owned(), "9".to_owned())]),
                &HashSet::from(["shardId-0".to_owned()]),
            )
            .unwrap();
        drop(abandoned);
        let back = store.restore().unwrap();
        assert_eq!(back.states.len(), 1, "{:?}", back.states);
        assert_eq!(back.states[&key("a")], vec![1]);
        assert_eq!((back.ended, back.logs), (HashSet::new(), logs(10)));
        assert_eq!(back.generation, 1, "a dropped commit is no generation");
        assert_eq!(
            commit(vec![(key("c"), Some(vec![4]))], 20),
            2,
            "the next commit is the next generation"
        );
        let back = store.restore().unwrap();
        assert_eq!(back.states.len(), 2, "{:?}", back.states);
        assert_eq!(back.states[&key("c")], vec![4]);
        assert_eq!(back.logs, logs(20));
    }

    #[test]
    fn state_of_another_plugin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CheckpointStore::open(dir.path(), "abc", schema()).unwrap();
        let err = CheckpointStore::open(dir.path(), "def", schema())
            .err()
            .expect("another plugin's state must be refused");
        let text = err.to_string();
        assert!(text.contains("abc") && text.contains("def"), "{text}");
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_never_a_panic() {
        // Random bytes of several sizes, and a real checkpoint with bytes overwritten.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        for size in [1usize, 100, 4096, 65_536] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("state.redb"), noise(size)).unwrap();
            let opened = CheckpointStore::open(dir.path(), "abc", schema())
                .and_then(|store| store.restore().map(|_| ()));
            let err = opened.expect_err("random bytes are no checkpoint");
            let text = err.to_string();
            assert!(text.contains("state.redb"), "{size} bytes: {text}");
        }
        let dir = tempfile::tempdir().unwrap();
        {
            let store = CheckpointStore::open(dir.path(), "abc", schema()).unwrap();
            let checkpoint = Checkpoint {
                changed: (0..200)
                    .map(|i| {
                        (
                            EntityKey::Str(format!("card-{i}")),
                            Some(vec![1, 2, 3, i as u8]),
                        )
                    })
                    .collect(),
                shards: Vec::new(),
            };
            store
                .commit(&Commit {
                    checkpoint: &checkpoint,
                    positions: &BTreeMap::new(),
                    ended: &HashSet::new(),
                    logs: LogLengths::default(),
                })
                .unwrap();
        }
        let path = dir.path().join("state.redb");
        // Everything past the file's header pages: the tables' pages are garbage.
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        for (i, b) in noise(len - 4096).into_iter().enumerate() {
            bytes[4096 + i] = b;
        }
        std::fs::write(&path, bytes).unwrap();
        let opened = CheckpointStore::open(dir.path(), "abc", schema())
            .and_then(|store| store.restore().map(|_| ()));
        let err = opened.expect_err("a damaged checkpoint must not restore");
        assert!(err.to_string().contains("state.redb"), "{err}");
    }

    #[test]
    fn a_state_whose_checksum_fails_is_damage() {
        let sealed = seal_state(b"scard-1", &[1, 2, 3]);
        assert_eq!(open_state(b"scard-1", &sealed), Some(&[1u8, 2, 3][..]));
        assert_eq!(
            open_state(b"scard-2", &sealed),
            None,
            "moved to another key"
        );
        let mut flipped = sealed.clone();
        flipped[1] ^= 1;
        assert_eq!(open_state(b"scard-1", &flipped), None);
        assert_eq!(
            open_state(b"scard-1", &[1, 2]),
            None,
            "shorter than a checksum"
        );
    }

    #[test]
    fn an_unbound_file_beside_logs_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let err = CheckpointStore::open_unless_new(
            dir.path(),
            "abc",
            schema(),
            Some("rows.jsonl (10 bytes)".into()),
        )
        .err()
        .expect("refused");
        assert!(
            matches!(err, ServiceError::MissingCheckpoint { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--fresh"), "{err}");
        // Still unbound: asking again refuses again (nothing was written to it).
        assert!(
            CheckpointStore::open_unless_new(dir.path(), "abc", schema(), Some("x".into()))
                .is_err()
        );
        // A bound file opens whatever logs lie beside it.
        CheckpointStore::open(dir.path(), "abc", schema()).unwrap();
        CheckpointStore::open_unless_new(dir.path(), "abc", schema(), Some("x".into())).unwrap();
    }
}
