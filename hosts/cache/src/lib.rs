//! The Redis cache in front of the online store.
//!
//! Each entity's latest record is one Redis hash, `lockstep:{group}@{version}:{entity}`,
//! with fields `t` (event time, UTC µs) and `v` (the record as JSON). Writes go through a
//! server-side script that compares event times, so an older write never overwrites a
//! newer one whatever order writers race in. Entries may carry a TTL.
//!
//! The cache is never the truth: the stream host writes it after the durable store,
//! and readers fall back to the store on a miss. This crate owns the key layout and
//! the event-time guard; it knows nothing of Arrow, plugins or stores.

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use std::time::Duration;
use thiserror::Error;

/// Why a cache call failed.
#[derive(Debug, Error)]
pub enum CacheError {
    /// Redis could not be reached or refused the call.
    #[error("redis {url}: {message}")]
    Redis {
        /// Which server.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// One entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The Redis key ([`cache_key`]).
    pub key: String,
    /// Event time of the record (UTC µs): the guard compares these.
    pub event_time: i64,
    /// The record, as text (JSON).
    pub value: String,
}

/// What a put did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CachePut {
    /// Entries written.
    pub written: usize,
    /// Entries older than the cached one, left out.
    pub stale: usize,
}

/// The Redis key of an entity's record in a group version (`group_id`: `name@version`).
pub fn cache_key(group_id: &str, entity: &str) -> String {
    format!("lockstep:{group_id}:{entity}")
}

/// The cached form of an entity's record, the one every writer uses and the serving
/// path reads: `{"event_time": µs, "plugin_hash": "…", "row": {…}}`, the row in the
/// online store's exact JSON.
pub fn record_value(
    event_time: i64,
    plugin_hash: &str,
    row: &serde_json::Map<String, serde_json::Value>,
) -> String {
    serde_json::json!({"event_time": event_time, "plugin_hash": plugin_hash, "row": row})
        .to_string()
}

/// The key pattern (Redis ACL `~pattern`) of every entity of a group version.
pub fn group_key_pattern(group_id: &str) -> String {
    format!("lockstep:{}:*", glob_escaped(group_id))
}

/// The key pattern of every entity of every version of the group `name`.
pub fn group_name_key_pattern(name: &str) -> String {
    format!("lockstep:{}@*:*", glob_escaped(name))
}

/// `text` with the glob characters ACL patterns give a meaning escaped.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The arguments of `ACL SETUSER` that make `user` a tenant of the cache: it logs in
/// with `password` and may touch only the keys of `group_ids` (`name@version`),
/// reading them (serving) and, when `write`, writing them (the stream host). Any
/// other key, and every other command, is refused with `NOPERM`.
pub fn tenant_acl(user: &str, password: &str, group_ids: &[String], write: bool) -> Vec<String> {
    let patterns: Vec<String> = group_ids.iter().map(|g| group_key_pattern(g)).collect();
    tenant_acl_for_patterns(user, password, &patterns, write)
}

/// [`tenant_acl`] over key patterns ([`group_key_pattern`], [`group_name_key_pattern`]).
pub fn tenant_acl_for_patterns(
    user: &str,
    password: &str,
    key_patterns: &[String],
    write: bool,
) -> Vec<String> {
    let mut rules = vec![
        user.to_owned(),
        "reset".to_owned(),
        "on".to_owned(),
        format!(">{password}"),
        "resetchannels".to_owned(),
    ];
    rules.extend(key_patterns.iter().map(|p| format!("~{p}")));
    // Connection upkeep and cluster discovery, then the reads of the serving path.
    let mut commands = vec![
        // Commands every Redis since 6.0 knows, so the rules load on any of them.
        "ping",
        "hello",
        "select",
        "readonly",
        "cluster|slots",
        "cluster|shards",
        "cluster|nodes",
        "hmget",
        "pttl",
    ];
    if write {
        // The event-time guard runs as a script; the commands inside it are checked too.
        commands.extend([
            "evalsha",
            "eval",
            "script|load",
            "hget",
            "hset",
            "pexpire",
            "del",
        ]);
    }
    rules.extend(commands.into_iter().map(|c| format!("+{c}")));
    rules
}

/// Sets the entry unless the cached one has a later event time, or is an erasure's
/// guard (an entry with a time and no value, see [`ERASE`]) at the same or a later
/// time; an entry whose time is not a number is replaced. Sets the TTL (ms) when
/// positive. Returns 1 when written.
const GUARDED_SET: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 't') or '')
if cur then
  local t = tonumber(ARGV[1])
  if cur > t then return 0 end
  if cur == t and redis.call('HEXISTS', KEYS[1], 'v') == 0 then return 0 end
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'v', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"#;

/// Erases an entry as of ARGV[1] (UTC µs): unless the entry is newer (a new life,
/// left as it is: -1), replaces it with a guard holding only that time, which reads as
/// a miss and which no write at or before that time gets past, for ARGV[2] ms.
/// Returns 1 when an entry with a value was there, 0 when none was, -1 when newer.
const ERASE: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 't') or '')
local held = redis.call('HEXISTS', KEYS[1], 'v')
if cur and cur > tonumber(ARGV[1]) then
  if held == 1 then return -1 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return held
"#;

/// How long an erasure's guard keeps older writes out: far longer than any write in
/// flight (a stream round, a store read written back), after which the erased entity
/// is gone from every copy a write could come from.
pub const ERASE_GUARD: Duration = Duration::from_secs(24 * 3600);

/// What [`RedisCache::erase`] found, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erased {
    /// An entry was there and is gone; a guard keeps older writes out.
    Removed,
    /// No entry was there; a guard keeps older writes out.
    Absent,
    /// The entry is newer than the erasure (a new life of the entity): left.
    Newer,
}

/// A cached entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Event time of the record (UTC µs).
    pub event_time: i64,
    /// The record, as written.
    pub value: String,
    /// Time left before the entry expires; `None` when it never does.
    pub expires_in: Option<Duration>,
}

/// One server, or a Redis Cluster whose keys spread over its nodes by hash slot.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection to Redis: one server (`redis://…`) or a cluster
/// (`redis-cluster://host:port,host:port,…`). It reconnects by itself after a failure.
///
/// On a cluster, keys are not colocated with hash tags (that would put a whole group on
/// one node); a multi-key call instead sends each key to its slot's node, all at once,
/// and gathers the answers: one round trip per node, in parallel.
#[derive(Clone)]
pub struct RedisCache {
    conn: Connection,
    url: String,
    script: redis::Script,
    erase_script: redis::Script,
    ttl: Option<Duration>,
}

/// The node URLs of `redis-cluster://[user:password@]h1:p1,h2:p2,…`, or `None` when
/// `url` is not a cluster URL.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis-cluster://")?;
    let (creds, hosts) = match rest.rsplit_once('@') {
        Some((creds, hosts)) => (format!("{creds}@"), hosts),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{creds}{h}"))
            .collect(),
    )
}

impl RedisCache {
    /// Connects to `url`: `redis://[user:password@]host:port[/db]` for one server,
    /// `redis-cluster://[user:password@]host:port,host:port,…` for a cluster (any of its
    /// nodes will do; the others are discovered). Entries written expire after `ttl`
    /// when given. Fails fast (within `timeout`) when the server is not there; later
    /// calls give up on a server that does not answer within `timeout` too.
    pub async fn connect(
        url: &str,
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<Self, CacheError> {
        let fail = |e: redis::RedisError| CacheError::Redis {
            url: redacted(url),
            message: e.to_string(),
        };
        let no_answer = || CacheError::Redis {
            url: redacted(url),
            message: format!("no answer within {timeout:?}"),
        };
        let conn = match cluster_nodes(url) {
            Some(nodes) if nodes.is_empty() => {
                return Err(CacheError::Redis {
                    url: redacted(url),
                    message: "a cluster URL needs at least one host:port".into(),
                });
            }
            Some(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map_err(fail)?;
                let conn = tokio::time::timeout(timeout, client.get_async_connection())
                    .await
                    .map_err(|_| no_answer())?
                    .map_err(fail)?;
                Connection::Cluster(conn)
            }
            None => {
                let client = redis::Client::open(url).map_err(fail)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2);
                let conn = tokio::time::timeout(
                    timeout,
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| no_answer())?
                .map_err(fail)?;
                Connection::Single(conn)
            }
        };
        Ok(RedisCache {
            conn,
            url: redacted(url),
            script: redis::Script::new(GUARDED_SET),
            erase_script: redis::Script::new(ERASE),
            ttl,
        })
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Connection::Cluster(_))
    }

    /// The TTL given to entries written.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    fn fail(&self, e: redis::RedisError) -> CacheError {
        CacheError::Redis {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// Writes `entries`, each unless the cached entry is newer: one round trip per
    /// call on one server (pipelined script calls), one per node on a cluster.
    pub async fn put(&self, entries: &[CacheEntry]) -> Result<CachePut, CacheError> {
        if entries.is_empty() {
            return Ok(CachePut::default());
        }
        let ttl_ms = self.ttl.map_or(0, |t| t.as_millis() as u64);
        let results: Vec<i64> = match &self.conn {
            Connection::Single(conn) => {
                let mut conn = conn.clone();
                let mut pipe = redis::pipe();
                for e in entries {
                    pipe.cmd("EVALSHA")
                        .arg(self.script.get_hash())
                        .arg(1)
                        .arg(&e.key)
                        .arg(e.event_time)
                        .arg(&e.value)
                        .arg(ttl_ms);
                }
                match pipe.query_async(&mut conn).await {
                    Ok(results) => results,
                    // A server that lost its scripts (restart, SCRIPT FLUSH) refuses every
                    // call of the pipeline: load the script and send it again. The guard
                    // makes a repeat harmless anyway.
                    Err(e) if e.code() == Some("NOSCRIPT") => {
                        self.script
                            .prepare_invoke()
                            .load_async(&mut conn)
                            .await
                            .map_err(|e| self.fail(e))?;
                        pipe.query_async(&mut conn)
                            .await
                            .map_err(|e| self.fail(e))?
                    }
                    Err(e) => return Err(self.fail(e)),
                }
            }
            Connection::Cluster(conn) => {
                // Each call goes to its key's node; `invoke_async` loads the script on
                // a node that lacks it.
                let calls = entries.iter().map(|e| {
                    let mut conn = conn.clone();
                    let mut invocation = self.script.key(&e.key);
                    invocation.arg(e.event_time).arg(&e.value).arg(ttl_ms);
                    async move { invocation.invoke_async::<i64>(&mut conn).await }
                });
                futures_util::future::try_join_all(calls)
                    .await
                    .map_err(|e| self.fail(e))?
            }
        };
        let written = results.iter().filter(|r| **r == 1).count();
        Ok(CachePut {
            written,
            stale: entries.len() - written,
        })
    }

    /// The cached `(event time, value)` of each key, `None` on a miss.
    pub async fn get(&self, keys: &[String]) -> Result<Vec<Option<(i64, String)>>, CacheError> {
        Ok(self
            .get_entries(keys)
            .await?
            .into_iter()
            .map(|c| c.map(|c| (c.event_time, c.value)))
            .collect())
    }

    /// The cached entry of each key with the time it has left, `None` on a miss: one
    /// round trip on one server, one per node (in parallel) on a cluster.
    pub async fn get_entries(&self, keys: &[String]) -> Result<Vec<Option<Cached>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let read = |pipe: &mut redis::Pipeline, key: &String| {
            pipe.cmd("HMGET").arg(key).arg("t").arg("v");
            pipe.cmd("PTTL").arg(key);
        };
        let raw: Vec<Raw> = match &self.conn {
            Connection::Single(conn) => {
                let mut pipe = redis::pipe();
                for key in keys {
                    read(&mut pipe, key);
                }
                let flat: Vec<redis::Value> = pipe
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(|e| self.fail(e))?;
                pairs(flat).map_err(|e| self.fail(e))?
            }
            Connection::Cluster(conn) => {
                // A pipeline may not cross slots: one small pipeline per key (its two
                // commands share the key's slot), all sent at once.
                let calls = keys.iter().map(|key| {
                    let mut conn = conn.clone();
                    let mut pipe = redis::pipe();
                    read(&mut pipe, key);
                    async move { pipe.query_async::<Raw>(&mut conn).await }
                });
                futures_util::future::try_join_all(calls)
                    .await
                    .map_err(|e| self.fail(e))?
            }
        };
        Ok(keys
            .iter()
            .zip(raw)
            .map(|(key, (pair, pttl))| match pair {
                (Some(t), Some(v)) => match t.parse::<i64>() {
                    Ok(event_time) => Some(Cached {
                        event_time,
                        value: v,
                        expires_in: u64::try_from(pttl).ok().map(Duration::from_millis),
                    }),
                    Err(e) => {
                        // Not an entry this crate wrote: a miss, so the reader goes to
                        // the store and its write-back replaces it.
                        tracing::warn!(url = %self.url, key = %key, error = %e, "cache entry with a corrupt event time; read as a miss");
                        None
                    }
                },
                _ => None,
            })
            .collect())
    }

    /// Removes keys; returns how many existed. Nothing stops an older write from
    /// putting a key back afterwards: an erasure uses [`erase`](Self::erase).
    pub async fn delete(&self, keys: &[String]) -> Result<usize, CacheError> {
        if keys.is_empty() {
            return Ok(0);
        }
        match &self.conn {
            Connection::Single(conn) => conn.clone().del(keys).await.map_err(|e| self.fail(e)),
            Connection::Cluster(conn) => {
                let calls = keys.iter().map(|key| {
                    let mut conn = conn.clone();
                    async move { conn.del::<_, usize>(key).await }
                });
                let removed = futures_util::future::try_join_all(calls)
                    .await
                    .map_err(|e| self.fail(e))?;
                Ok(removed.into_iter().sum())
            }
        }
    }

    /// Erases `keys` as of `erased_at` (UTC µs), each on the node that holds it: the
    /// entry goes, and a guard that reads as a miss keeps every write at or before
    /// that time out for [`ERASE_GUARD`] — an older write-through still in flight, or
    /// a store read written back, cannot bring the entity back. An entry newer than
    /// the erasure is a new life and stays.
    pub async fn erase(&self, keys: &[String], erased_at: i64) -> Result<Vec<Erased>, CacheError> {
        let guard_ms = ERASE_GUARD.as_millis() as u64;
        let calls = keys.iter().map(|key| {
            let mut invocation = self.erase_script.key(key);
            invocation.arg(erased_at).arg(guard_ms);
            let conn = self.conn.clone();
            async move {
                match conn {
                    Connection::Single(mut c) => invocation.invoke_async::<i64>(&mut c).await,
                    Connection::Cluster(mut c) => invocation.invoke_async::<i64>(&mut c).await,
                }
            }
        });
        let results = futures_util::stream::iter(calls)
            .buffered(64)
            .collect::<Vec<_>>()
            .await;
        results
            .into_iter()
            .map(|r| match r.map_err(|e| self.fail(e))? {
                1 => Ok(Erased::Removed),
                -1 => Ok(Erased::Newer),
                _ => Ok(Erased::Absent),
            })
            .collect()
    }

    /// Whether each of `keys` holds an entry with a value (a guard does not count).
    pub async fn holds(&self, keys: &[String]) -> Result<Vec<bool>, CacheError> {
        Ok(self
            .get_entries(keys)
            .await?
            .into_iter()
            .map(|e| e.is_some())
            .collect())
    }
}

/// One key's reply: its `t` and `v` fields, and its PTTL.
type Raw = ((Option<String>, Option<String>), i64);

/// The replies of a pipeline of (HMGET, PTTL) pairs, paired up.
fn pairs(flat: Vec<redis::Value>) -> redis::RedisResult<Vec<Raw>> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(fields), Some(pttl)) = (it.next(), it.next()) {
        out.push((
            redis::FromRedisValue::from_redis_value(fields)?,
            redis::FromRedisValue::from_redis_value(pttl)?,
        ));
    }
    Ok(out)
}

/// `url` without its password, for messages and logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("redis://tenant:s3cret@127.0.0.1:6379/0"),
            "redis://tenant:***@127.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn cluster_urls_name_every_node_with_the_credentials() {
        assert_eq!(
            cluster_nodes("redis-cluster://u:p@127.0.0.1:7000, 127.0.0.1:7001"),
            Some(vec![
                "redis://u:p@127.0.0.1:7000".to_owned(),
                "redis://u:p@127.0.0.1:7001".to_owned()
            ])
        );
        assert_eq!(cluster_nodes("redis://127.0.0.1:7000"), None);
        assert_eq!(cluster_nodes("redis-cluster://"), Some(vec![]));
    }

    #[test]
    fn tenant_rules_name_only_their_groups_keys() {
        let rules = tenant_acl(
            "a",
            "pw",
            &["g@1.0.0".to_owned(), "x*y@1".to_owned()],
            false,
        );
        assert_eq!(&rules[..4], &["a", "reset", "on", ">pw"]);
        assert!(rules.contains(&"~lockstep:g@1.0.0:*".to_owned()));
        assert!(rules.contains(&"~lockstep:x\\*y@1:*".to_owned()));
        assert!(rules.contains(&"+hmget".to_owned()));
        assert!(
            !rules
                .iter()
                .any(|r| r == "+hset" || r == "+@all" || r == "~*")
        );
        assert!(tenant_acl("a", "pw", &[], true).contains(&"+hset".to_owned()));
    }

    #[test]
    fn keys_name_group_version_and_entity() {
        assert_eq!(
            cache_key("txn_velocity@1", "c42"),
            "lockstep:txn_velocity@1:c42"
        );
    }
}
