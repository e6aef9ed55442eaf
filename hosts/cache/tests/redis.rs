//! The cache against a real redis-server on loopback.

use lockstep_cache::{CacheEntry, RedisCache, cache_key};
use lockstep_testkit::{Redis, RedisCluster, free_port};
use std::time::Duration;

fn entry(entity: &str, event_time: i64, value: &str) -> CacheEntry {
    CacheEntry {
        key: cache_key("g@1", entity),
        event_time,
        value: value.to_owned(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_older_write_never_replaces_a_newer_one_whatever_the_order() {
    let redis = Redis::start(&[]);
    rt().block_on(async {
        let cache = RedisCache::connect(&redis.url(), None, Duration::from_secs(5))
            .await
            .unwrap();
        let put = cache
            .put(&[entry("a", 20, "new"), entry("b", -5, "negative time")])
            .await
            .unwrap();
        assert_eq!((put.written, put.stale), (2, 0));
        // Older, equal and newer writes in one pipeline.
        let put = cache
            .put(&[
                entry("a", 10, "old"),
                entry("b", -5, "same time, later write"),
            ])
            .await
            .unwrap();
        assert_eq!((put.written, put.stale), (1, 1));
        let keys = vec![
            cache_key("g@1", "a"),
            cache_key("g@1", "b"),
            cache_key("g@1", "none"),
        ];
        let got = cache.get(&keys).await.unwrap();
        assert_eq!(got[0], Some((20, "new".to_owned())));
        assert_eq!(got[1], Some((-5, "same time, later write".to_owned())));
        assert_eq!(got[2], None);
        assert_eq!(cache.delete(&keys).await.unwrap(), 2);
        assert_eq!(cache.get(&keys).await.unwrap(), vec![None, None, None]);
    });
}

#[test]
fn entries_expire_after_their_ttl_and_the_script_survives_a_flush() {
    let redis = Redis::start(&[]);
    rt().block_on(async {
        let cache = RedisCache::connect(
            &redis.url(),
            Some(Duration::from_millis(200)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        cache.put(&[entry("t", 1, "v")]).await.unwrap();
        assert!(cache.get(&[cache_key("g@1", "t")]).await.unwrap()[0].is_some());
        // A server that lost its scripts (restart, SCRIPT FLUSH) still takes writes.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        cache.put(&[entry("u", 1, "v")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = cache
            .get(&[cache_key("g@1", "t"), cache_key("g@1", "u")])
            .await
            .unwrap();
        assert_eq!(got, vec![None, None]);
    });
}

#[test]
fn no_server_is_a_quick_clear_error_and_passwords_stay_out_of_it() {
    let port = free_port();
    rt().block_on(async {
        let started = std::time::Instant::now();
        let url = format!("redis://user:hunter2@127.0.0.1:{port}");
        let err = RedisCache::connect(&url, None, Duration::from_millis(500))
            .await
            .err()
            .expect("nothing listens there");
        let text = err.to_string();
        assert!(text.contains(&port.to_string()), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_cluster_spreads_keys_over_its_nodes_and_reads_them_back_in_order() {
    let cluster = RedisCluster::start(3, &[]);
    rt().block_on(async {
        let cache = RedisCache::connect(
            &cluster.url(),
            Some(Duration::from_secs(60)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(cache.is_cluster());
        let entries: Vec<CacheEntry> = (0..200)
            .map(|i| entry(&format!("e{i}"), i, &format!("v{i}")))
            .collect();
        let put = cache.put(&entries).await.unwrap();
        assert_eq!((put.written, put.stale), (200, 0));
        // The guard holds on every node.
        let put = cache.put(&[entry("e7", 1, "older")]).await.unwrap();
        assert_eq!((put.written, put.stale), (0, 1));
        // Every node holds some of them: no hash tags pin a group to one node.
        for node in cluster.nodes() {
            let client = redis::Client::open(node.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let size: usize = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
            assert!(size > 20, "node {} holds {size} of 200 keys", node.port());
        }
        let mut keys: Vec<String> = (0..200)
            .rev()
            .map(|i| cache_key("g@1", &format!("e{i}")))
            .collect();
        keys.push(cache_key("g@1", "absent"));
        let got = cache.get_entries(&keys).await.unwrap();
        for (i, cached) in (0..200).rev().zip(&got) {
            let cached = cached.as_ref().expect("written");
            assert_eq!(
                (cached.event_time, cached.value.as_str()),
                (i, format!("v{i}").as_str())
            );
            let left = cached.expires_in.expect("written with a TTL");
            assert!(
                left > Duration::from_secs(50) && left <= Duration::from_secs(60),
                "{left:?}"
            );
        }
        assert_eq!(got[200], None);
        assert_eq!(cache.delete(&keys).await.unwrap(), 200);
        assert!(cache.get(&keys).await.unwrap().iter().all(Option::is_none));
    });
}

#[test]
fn entries_without_a_ttl_say_so() {
    let redis = Redis::start(&[]);
    rt().block_on(async {
        let cache = RedisCache::connect(&redis.url(), None, Duration::from_secs(5))
            .await
            .unwrap();
        cache.put(&[entry("forever", 3, "v")]).await.unwrap();
        let got = cache
            .get_entries(&[cache_key("g@1", "forever")])
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().map(|c| c.expires_in), Some(None));
    });
}

/// An erasure on `cache`: the entry goes, and no write at or before its time gets
/// back in, while a later write (a new life) does; an entry newer than the erasure
/// stays.
async fn erasure_keeps_older_writes_out(cache: &RedisCache) {
    use lockstep_cache::Erased;
    cache
        .put(&[entry("a", 10, "a@10"), entry("b", 50, "b@50")])
        .await
        .unwrap();
    let keys = [
        cache_key("g@1", "a"),
        cache_key("g@1", "b"),
        cache_key("g@1", "c"),
    ];
    let erased = cache.erase(&keys, 30).await.unwrap();
    assert_eq!(erased, vec![Erased::Removed, Erased::Newer, Erased::Absent]);
    assert_eq!(
        cache.get(&keys).await.unwrap(),
        vec![None, Some((50, "b@50".to_owned())), None],
        "a guard reads as a miss; a newer entry is a new life and stays"
    );
    // Older and equal-time writes in flight, then a new life.
    let put = cache
        .put(&[
            entry("a", 20, "older"),
            entry("a", 30, "same time"),
            entry("c", 5, "old"),
        ])
        .await
        .unwrap();
    assert_eq!(
        (put.written, put.stale),
        (0, 3),
        "nothing at or before the erasure gets in"
    );
    assert_eq!(cache.holds(&keys).await.unwrap(), vec![false, true, false]);
    let put = cache.put(&[entry("a", 31, "new life")]).await.unwrap();
    assert_eq!(put.written, 1);
    assert_eq!(
        cache.get(&keys[..1]).await.unwrap(),
        vec![Some((31, "new life".to_owned()))]
    );
    // Erasing again at an earlier time never lowers a guard.
    cache.erase(&keys[2..], 40).await.unwrap();
    cache.erase(&keys[2..], 10).await.unwrap();
    let put = cache.put(&[entry("c", 35, "between")]).await.unwrap();
    assert_eq!(put.written, 0, "the later guard stands");
}

#[test]
fn an_erasure_keeps_every_older_write_out_on_one_server() {
    let redis = Redis::start(&[]);
    rt().block_on(async {
        let cache = RedisCache::connect(&redis.url(), None, Duration::from_secs(5))
            .await
            .unwrap();
        erasure_keeps_older_writes_out(&cache).await;
    });
}

#[test]
fn an_erasure_keeps_every_older_write_out_on_every_node_of_a_cluster() {
    let cluster = RedisCluster::start(3, &[]);
    rt().block_on(async {
        let cache = RedisCache::connect(&cluster.url(), None, Duration::from_secs(5))
            .await
            .unwrap();
        erasure_keeps_older_writes_out(&cache).await;
        // Keys on every node: each erased on its own.
        let many: Vec<CacheEntry> = (0..60).map(|i| entry(&format!("k{i}"), 1, "v")).collect();
        cache.put(&many).await.unwrap();
        let keys: Vec<String> = many.iter().map(|e| e.key.clone()).collect();
        let erased = cache.erase(&keys, 2).await.unwrap();
        assert!(erased.iter().all(|e| *e == lockstep_cache::Erased::Removed));
        assert!(cache.holds(&keys).await.unwrap().iter().all(|h| !h));
    });
    for node in cluster.nodes() {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &node.port().to_string(), "dbsize"])
            .output()
            .unwrap();
        let n: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(
            n > 0,
            "every node holds some guards (keys spread over the slots)"
        );
    }
}
