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
