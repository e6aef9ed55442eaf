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

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
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
    /// A cached value is not what this crate writes.
    #[error("redis {url}: entry {key} is corrupt: {message}")]
    Corrupt {
        /// Which server.
        url: String,
        /// The key.
        key: String,
        /// Why.
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

/// Sets the entry unless the cached one has a later event time; sets the TTL (ms)
/// when positive. Returns 1 when written.
const GUARDED_SET: &str = r#"
local cur = redis.call('HGET', KEYS[1], 't')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'v', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"#;

/// A connection to one Redis server (it reconnects by itself after a failure).
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    url: String,
    script: redis::Script,
    ttl: Option<Duration>,
}

impl RedisCache {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`); entries written
    /// expire after `ttl` when given. Fails fast (within `timeout`) when the server
    /// is not there.
    pub async fn connect(
        url: &str,
        ttl: Option<Duration>,
        timeout: Duration,
    ) -> Result<Self, CacheError> {
        let fail = |e: redis::RedisError| CacheError::Redis {
            url: redacted(url),
            message: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(fail)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let conn =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| CacheError::Redis {
                    url: redacted(url),
                    message: format!("no answer within {timeout:?}"),
                })?
                .map_err(fail)?;
        Ok(RedisCache {
            conn,
            url: redacted(url),
            script: redis::Script::new(GUARDED_SET),
            ttl,
        })
    }

    fn fail(&self, e: redis::RedisError) -> CacheError {
        CacheError::Redis {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// Writes `entries`, each unless the cached entry is newer; one round trip per
    /// call (pipelined script calls).
    pub async fn put(&self, entries: &[CacheEntry]) -> Result<CachePut, CacheError> {
        if entries.is_empty() {
            return Ok(CachePut::default());
        }
        let ttl_ms = self.ttl.map_or(0, |t| t.as_millis() as u64);
        let mut conn = self.conn.clone();
        // Make sure the script is loaded (after a server restart it is gone).
        self.script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
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
        let results: Vec<i64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        let written = results.iter().filter(|r| **r == 1).count();
        Ok(CachePut {
            written,
            stale: entries.len() - written,
        })
    }

    /// The cached `(event time, value)` of each key, `None` on a miss; one round trip.
    pub async fn get(&self, keys: &[String]) -> Result<Vec<Option<(i64, String)>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET").arg(key).arg("t").arg("v");
        }
        let raw: Vec<(Option<String>, Option<String>)> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        keys.iter()
            .zip(raw)
            .map(|(key, pair)| match pair {
                (Some(t), Some(v)) => {
                    t.parse::<i64>()
                        .map(|t| Some((t, v)))
                        .map_err(|e| CacheError::Corrupt {
                            url: self.url.clone(),
                            key: key.clone(),
                            message: format!("event time `{t}`: {e}"),
                        })
                }
                _ => Ok(None),
            })
            .collect()
    }

    /// Removes keys (erasure); returns how many existed.
    pub async fn delete(&self, keys: &[String]) -> Result<usize, CacheError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        conn.del(keys).await.map_err(|e| self.fail(e))
    }
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
    fn keys_name_group_version_and_entity() {
        assert_eq!(
            cache_key("txn_velocity@1", "c42"),
            "lockstep:txn_velocity@1:c42"
        );
    }
}
